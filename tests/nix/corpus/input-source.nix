# A local file as an input source, and the whole build environment recorded.
{ busyboxDir, salt ? "" }:
let lib = import ./lib.nix { inherit busyboxDir salt; }; in
lib.mkDrv {
  name = "input-source";
  data = ./data/input.txt;
  # Nix lets a derivation override some of its defaults but not others.
  HOME = "/custom-home";
  TERM = "dumb";
  NIX_BUILD_TOP = "/elsewhere";
  NIX_STORE = "/custom-store";
  script = ''
    mkdir $out
    cp $data $out/input
    echo $data > $out/where
    env | sort > $out/env
    id > $out/id
    hostname > $out/hostname
    cat /etc/passwd /etc/group > $out/etc
    umask > $out/umask
  '';
}
