# __structuredAttrs: attributes reach the build as .attrs.json and .attrs.sh, not the environment.
{ busyboxDir, salt ? "" }:
let lib = import ./lib.nix { inherit busyboxDir salt; }; in
lib.mkDrv {
  name = "structured";
  __structuredAttrs = true;
  outputs = [ "out" "dev" ];
  aString = "a 'quoted' \"string\" with $dollar and \\ backslash";
  anInt = 42;
  aFloat = 1.5;
  aBool = true;
  aFalse = false;
  aNull = null;
  aList = [ "one" "two words" 3 ];
  anAttrset = { key = "value"; nested = { deep = [ 1 2 ]; }; };
  strings = { a = "x"; b = "y z"; };
  script = ''
    out=$(sed 's/.*"outputs":{[^}]*"out":"\([^"]*\)".*/\1/' /build/.attrs.json)
    dev=$(sed 's/.*"outputs":{[^}]*"dev":"\([^"]*\)".*/\1/' /build/.attrs.json)
    mkdir -p $out $dev
    cp /build/.attrs.json /build/.attrs.sh $out/
    # Nix 2.8 points these two at its host-side directory; see builder/nix/to_request.py.
    env | grep -v ^NIX_ATTRS_ | sort > $out/env
    ls -a /build > $dev/listing
    stat -c '%n %a' /build/.attrs.json /build/.attrs.sh >> $dev/listing
  '';
}
