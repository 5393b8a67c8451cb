# Independent derivations that each take a couple of seconds, to spread over
# several remote machines.
{ busyboxDir, salt ? "" }:
let lib = import ../nix/corpus/lib.nix { inherit busyboxDir salt; }; in
builtins.genList (i: lib.mkDrv {
  name = "slow-${toString i}";
  script = "sleep 2; echo ${toString i} > $out";
}) 4
