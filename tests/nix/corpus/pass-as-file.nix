# passAsFile: large or awkward values arrive as files under /build.
{ busyboxDir, salt ? "" }:
let lib = import ./lib.nix { inherit busyboxDir salt; }; in
lib.mkDrv {
  name = "pass-as-file";
  passAsFile = [ "text" "other" ];
  text = "first line\nsecond line with 'quotes' and \"double quotes\"\n";
  other = "ünïcödé ☃";
  script = ''
    mkdir $out
    cp $textPath $out/text
    cp $otherPath $out/other
    echo "$textPath $otherPath" > $out/paths
    env | sort > $out/env
  '';
}
