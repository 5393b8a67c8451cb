# Builders that break the limits a Nix client sends with each build: one goes
# silent in `sleep` (a command line the tests can look for), one writes far
# more log than allowed.
{ busyboxDir, salt ? "", sleep ? "sleep 30" }:
let lib = import ../nix/corpus/lib.nix { inherit busyboxDir salt; }; in
{
  sleeper = lib.mkDrv {
    name = "limits-sleeper";
    script = "echo going to sleep >&2; ${sleep}; echo awake > $out";
  };
  chatty = lib.mkDrv {
    name = "limits-chatty";
    script = "i=0; while [ $i -lt 2000 ]; do echo chatter line $i of a builder that talks too much >&2; i=$((i+1)); done; echo done > $out";
  };
}
