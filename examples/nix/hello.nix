# A derivation without nixpkgs: the host's static busybox is the only tool.
#   mkdir -p /tmp/bb && cp /bin/busybox /tmp/bb/
#   builder nix build $(nix-instantiate examples/nix/hello.nix) --import-to-nix
{ busyboxDir ? "/tmp/bb" }:
let
  busybox = builtins.path { path = /. + busyboxDir; name = "busybox"; };
in
derivation {
  name = "hello";
  system = builtins.currentSystem;
  builder = "${busybox}/busybox";
  args = [ "sh" "-c" "${busybox}/busybox mkdir -p $out && echo 'Hello from a derivation' > $out/greeting" ];
}
