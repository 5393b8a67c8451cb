# One output, one file.
{ busyboxDir, salt ? "" }:
let lib = import ./lib.nix { inherit busyboxDir salt; }; in
lib.mkDrv {
  name = "hello";
  script = ''
    mkdir -p $out/bin
    printf '#!/bin/sh\necho hello\n' > $out/bin/hello
    chmod +x $out/bin/hello
    ln -s bin/hello $out/link
  '';
}
