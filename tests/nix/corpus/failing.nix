# A builder that fails.
{ busyboxDir, salt ? "" }:
let lib = import ./lib.nix { inherit busyboxDir salt; }; in
lib.mkDrv {
  name = "failing";
  script = "echo about to fail >&2; exit 3";
}
