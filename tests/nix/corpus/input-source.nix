# A local file as an input source, and the whole build environment recorded.
{ busyboxDir, salt ? "" }:
let lib = import ./lib.nix { inherit busyboxDir salt; }; in
lib.mkDrv {
  name = "input-source";
  data = ./data/input.txt;
  script = ''
    mkdir $out
    cp $data $out/input
    echo $data > $out/where
    env | sort > $out/env
    id > $out/id
    hostname > $out/hostname
    ls -ln / /build > $out/root
    umask > $out/umask
  '';
}
