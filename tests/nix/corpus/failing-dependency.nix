# A dependency fails, so the derivation above it cannot be built.
{ busyboxDir, salt ? "" }:
let lib = import ./lib.nix { inherit busyboxDir salt; }; in
lib.mkDrv {
  name = "failing-dependency";
  dep = import ./failing.nix { inherit busyboxDir salt; };
  script = "cp $dep $out";
}
