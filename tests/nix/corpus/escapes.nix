# Strings with every escape the derivation format has.
{ busyboxDir, salt ? "" }:
let lib = import ./lib.nix { inherit busyboxDir salt; }; in
lib.mkDrv {
  name = "escapes";
  quotes = "double \" single ' back \\ slash";
  whitespace = "tab\there\r\nnew\nline";
  dollar = "\${not interpolated} $HOME";
  script = ''
    mkdir $out
    echo "$quotes" > $out/quotes
    echo "$whitespace" > $out/whitespace
    echo "$dollar" > $out/dollar
  '';
}
