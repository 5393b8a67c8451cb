# Several outputs, each written separately.
{ busyboxDir, salt ? "" }:
let lib = import ./lib.nix { inherit busyboxDir salt; }; in
lib.mkDrv {
  name = "multi";
  outputs = [ "out" "dev" "doc" ];
  script = ''
    mkdir -p $out/lib $dev/include $doc
    echo library > $out/lib/libmulti
    echo header > $dev/include/multi.h
    echo manual > $doc/README
  '';
}
