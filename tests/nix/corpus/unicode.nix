# Non-ASCII attribute names, values and file names.
{ busyboxDir, salt ? "" }:
let lib = import ./lib.nix { inherit busyboxDir salt; }; in
lib.mkDrv {
  name = "unicode";
  "grüße" = "héllo wörld ☃ 日本語";
  emoji = "🦀 → ✓";
  script = ''
    mkdir $out
    echo "$emoji" > "$out/ünïcödé-☃.txt"
    env | grep -e grüße -e emoji | sort > $out/env
  '';
}
