# Two independent derivations meeting in a third: built in parallel.
{ busyboxDir, salt ? "" }:
let lib = import ./lib.nix { inherit busyboxDir salt; }; in
let
  side = n: lib.mkDrv {
    name = "diamond-${n}";
    script = "sleep 1; echo ${n} > $out";
  };
in
lib.mkDrv {
  name = "diamond";
  left = side "left";
  right = side "right";
  script = "mkdir $out; cat $left $right > $out/both; echo $left $right > $out/refs";
}
