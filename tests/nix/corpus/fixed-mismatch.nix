# A fixed-output derivation whose output does not match its declared hash.
{ busyboxDir, salt ? "" }:
let lib = import ./lib.nix { inherit busyboxDir salt; }; in
lib.mkDrv {
  name = "fixed-mismatch-${salt}";
  outputHashMode = "flat";
  outputHashAlgo = "sha256";
  outputHash = "0rcnqrrdvppl92i39a6njnzq1icsqcqc9ffsy080qg40w8d7kkxd";
  script = "printf 'other content\\n' > $out";
}
