# Fixed-output, recursive: a whole tree with an executable and a symlink.
{ busyboxDir, salt ? "" }:
let lib = import ./lib.nix { inherit busyboxDir salt; }; in
lib.mkDrv {
  name = "fixed-recursive-${salt}";
  outputHashMode = "recursive";
  outputHashAlgo = "sha256";
  outputHash = "sha256-KBB0+iY2yNUGemPPk3s0hDtNTEmbwHk5pmkV1IaD7uM=";
  script = ''
    mkdir -p $out/bin
    echo data > $out/data
    printf '#!/bin/sh\n' > $out/bin/tool
    chmod +x $out/bin/tool
    ln -s data $out/link
  '';
}
