# Shared by every derivation of the corpus: a static busybox imported from the
# host as the only tool, and a salt that makes each test run's derivations new.
{ busyboxDir, salt }:
rec {
  busybox = builtins.path { path = /. + busyboxDir; name = "busybox"; };
  bb = "${busybox}/busybox";
  mkDrv = { name, script, ... }@attrs:
    derivation (builtins.removeAttrs attrs [ "script" ] // {
      inherit name salt;
      system = builtins.currentSystem;
      builder = bb;
      args = [ "sh" "-c" "set -e; ${bb} mkdir -p /build/bin; ${bb} --install -s /build/bin; export PATH=/build/bin; ${script}" ];
    });
}
