# Outputs referring to each other and to themselves.
{ busyboxDir, salt ? "" }:
let lib = import ./lib.nix { inherit busyboxDir salt; }; in
lib.mkDrv {
  name = "output-refs";
  outputs = [ "out" "lib" ];
  script = ''
    mkdir -p $lib $out/bin
    echo "I live in $lib" > $lib/self
    echo "lib is at $lib, I am $out" > $out/bin/info
  '';
}
