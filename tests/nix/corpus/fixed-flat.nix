# Fixed-output, flat, in the three hash algorithms Nix accepts here.
{ busyboxDir, salt ? "" }:
let lib = import ./lib.nix { inherit busyboxDir salt; }; in
let
  flat = algo: hash: lib.mkDrv {
    name = "fixed-flat-${algo}-${salt}";
    outputHashMode = "flat";
    outputHashAlgo = algo;
    outputHash = hash;
    script = "env | grep -q NIX_OUTPUT_CHECKED=1; printf 'fixed content\\n' > $out";
  };
in
lib.mkDrv {
  name = "fixed-flat";
  sha1 = flat "sha1" "3a1f36c33a7a0c4885f3cb931ca52c4c61f7658c";
  sha256 = flat "sha256" "0rcnqrrdvppl92i39a6njnzq1icsqcqc9ffsy080qg40w8d7kkxd";
  sha512 = flat "sha512" "d3954c1deacf33c23e73fe0dedcfe75cb99e8be9256c65c4a4b625acdcfc307effe23dd1925380ad5eba88bf6bc3a70df7d589787be5afe550c0fdb7751ce69f";
  script = "mkdir $out; cat $sha1 $sha256 $sha512 > $out/all";
}
