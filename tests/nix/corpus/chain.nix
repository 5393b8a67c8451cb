# Three levels of dependencies; each level refers to the one below.
{ busyboxDir, salt ? "" }:
let lib = import ./lib.nix { inherit busyboxDir salt; }; in
let
  level1 = lib.mkDrv {
    name = "chain-1";
    script = "echo bottom > $out";
  };
  level2 = lib.mkDrv {
    name = "chain-2";
    below = level1;
    script = "mkdir $out; cat $below > $out/copied; echo $below > $out/ref";
  };
in
lib.mkDrv {
  name = "chain-3";
  below = level2;
  script = "mkdir $out; cat $below/copied $below/ref > $out/seen; ln -s $below $out/below";
}
