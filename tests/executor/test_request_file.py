"""Request files: the TOML form written by hand, and protobuf JSON and text format read strictly."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builder.errors import InvalidArgumentError
from builder.executor.request import request_from_proto
from builder.executor.request_file import RequestFile, load_request_file, render_request_file
from builder.executor.request_toml import HostImport, parse_request_toml, render_request_toml
from builder.executor.strict_parsing import is_canonical_base64
from builder.proto.snix.build.protos import build_pb2 as snix_build
from tests.digests import EMPTY_DIGEST

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

MINIMAL = """
command_args = ["/bin/sh", "-c", "echo hi > /nix/store/out"]
working_dir = "build"
scratch_paths = ["build", "nix/store"]
inputs_dir = "nix/store"
outputs = ["nix/store/out"]

[constraints]
system = "x86_64-linux"
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


def load_toml(tmp_path: Path, text: str) -> RequestFile:
    return load_request_file(write(tmp_path, "req.toml", text))


def refusal(tmp_path: Path, text: str) -> str:
    with pytest.raises(InvalidArgumentError) as caught:
        load_toml(tmp_path, text)
    return str(caught.value)


# Protobuf JSON


def test_a_plain_path_as_a_bytes_value_is_refused_naming_the_field(tmp_path: Path) -> None:
    """What used to decode to garbage and fail the build with 'output was not produced'."""
    document = {
        "commandArgs": ["/bin/sh", "-c", "echo hi > $out"],
        "environmentVars": [
            {"key": "HOME", "value": "L2hvbWVsZXNzLXNoZWx0ZXI="},
            {"key": "PATH", "value": "L2Jpbg=="},
            {"key": "out", "value": "/nix/store/00000000000000000000000000000000-mine"},
        ],
    }
    path = write(tmp_path, "req.json", json.dumps(document))
    with pytest.raises(InvalidArgumentError) as caught:
        load_request_file(path)
    message = str(caught.value)
    assert "environmentVars[2].value" in message
    assert "base64" in message
    assert ".toml" in message


def test_bytes_inside_inputs_are_checked_too(tmp_path: Path) -> None:
    document = {"inputs": [{"file": {"name": "aGVsbG8=", "digest": "not a digest!"}}]}
    path = write(tmp_path, "req.json", json.dumps(document))
    with pytest.raises(InvalidArgumentError, match=r"inputs\[0\]\.file\.digest"):
        load_request_file(path)


def test_field_names_as_written_in_the_file(tmp_path: Path) -> None:
    document = {"additional_files": [{"path": "build/x", "contents": "/build/plain-value"}]}
    path = write(tmp_path, "req.json", json.dumps(document))
    with pytest.raises(InvalidArgumentError, match=r"additional_files\[0\]\.contents"):
        load_request_file(path)


@pytest.mark.parametrize(
    ("document", "where"),
    [
        ('{"commandArgs": ["/bin/true"], "command_args": ["/bin/false"]}', "command_args"),
        ('{"constraints": {"minMemory": "1", "min_memory": "2"}}', r"constraints\.min_memory"),
    ],
)
def test_a_field_given_under_both_its_names_is_refused(
    tmp_path: Path, document: str, where: str
) -> None:
    """Protobuf JSON would keep whichever spelling comes last, silently dropping the other."""
    path = write(tmp_path, "req.json", document)
    with pytest.raises(InvalidArgumentError, match=rf"{where}: .*also given as"):
        load_request_file(path)


@pytest.mark.parametrize("suffix", [".toml", ".json", ".txtpb", ".pb"])
def test_a_request_file_without_end_is_refused_at_the_limit(tmp_path: Path, suffix: str) -> None:
    """A path to /dev/zero (or any file past the limit) is not read until memory runs out."""
    path = tmp_path / f"req{suffix}"
    path.symlink_to("/dev/zero")
    with pytest.raises(InvalidArgumentError, match=r"larger than the limit of 64 MiB"):
        load_request_file(path)


def test_canonical_base64_still_reads(tmp_path: Path) -> None:
    raw = bytes(range(256))
    document = {
        "environmentVars": [
            {"key": "A", "value": base64.b64encode(raw).decode()},
            {"key": "B", "value": base64.urlsafe_b64encode(raw).decode()},
            {"key": "C", "value": base64.b64encode(b"ab").decode().rstrip("=")},
        ]
    }
    loaded = load_request_file(write(tmp_path, "req.json", json.dumps(document)))
    assert [v.value for v in loaded.message.environment_vars] == [raw, raw, b"ab"]


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("", True),
        ("L2Jpbg==", True),
        ("L2Jpbg", True),
        ("-_-_", True),
        ("+/+/", True),
        ("+/-_", False),  # both alphabets at once
        ("L2Jpbh==", False),  # trailing bits set: not what encoding any bytes gives
        ("L2Jp bg==", False),
        ("L2Jpbg===", False),
        ("L", False),
        ("/nix/store/x-mine", False),
    ],
)
def test_canonical_base64(text: str, canonical: bool) -> None:
    assert is_canonical_base64(text) is canonical


# Text format


def test_text_format_refuses_an_unknown_escape(tmp_path: Path) -> None:
    text = 'command_args: "/bin/sh"\n# a comment with "\\q" is not a string\ncommand_args: "\\d+"\n'
    with pytest.raises(InvalidArgumentError, match=r"3:\d+ .*command_args: unknown escape"):
        load_request_file(write(tmp_path, "req.txtpb", text))


def test_text_format_defined_escapes_still_read(tmp_path: Path) -> None:
    text = 'command_args: "a\\\\b\\n\\t\\"\\x41\\101\\u00e9" environment_vars { value: "\\xff" }'
    loaded = load_request_file(write(tmp_path, "req.txtpb", text))
    assert loaded.message.command_args == ['a\\b\n\t"AAé']
    assert loaded.message.environment_vars[0].value == b"\xff"


# How the form is chosen


def test_unknown_suffix_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match=r"unknown request format; use \.toml"):
        load_request_file(write(tmp_path, "req.yaml", MINIMAL))
    with pytest.raises(InvalidArgumentError, match=r"nothing\.toml: No such file"):
        load_request_file(tmp_path / "nothing.toml")


def test_json_in_a_toml_file_is_not_guessed(tmp_path: Path) -> None:
    body = json.dumps({"commandArgs": ["true"]})
    with pytest.raises(InvalidArgumentError, match=r"req\.toml: not valid TOML"):
        load_toml(tmp_path, body)


# The TOML form


def test_examples_in_toml_are_the_protobuf_ones() -> None:
    """hello.toml is hello.json written by hand: the same message."""
    by_hand = load_request_file(EXAMPLES / "hello.toml")
    protobuf = load_request_file(EXAMPLES / "hello.json")
    assert by_hand.message == protobuf.message
    assert by_hand.message.environment_vars[1].value == b"/bin"


def test_every_field(tmp_path: Path) -> None:
    loaded = load_toml(
        tmp_path,
        f"""
command_args = ["/bin/sh", "-c", "true"]
working_dir = "build"
scratch_paths = ["build", "nix/store"]
inputs_dir = "nix/store"
outputs = ["nix/store/out"]
refscan_needles = ["abc"]

[environment_vars]
out = "/nix/store/out"
BIN = {{ base64 = "/w==" }}
HEX = {{ hex = "01ff" }}

[constraints]
system = "x86_64-linux"
min_memory = 18446744073709551615
available_ro_paths = ["/dev/kvm"]
network_access = true
provide_bin_sh = true

[inputs]
dep = {{ directory = "{EMPTY_DIGEST}", size = 0 }}
src = {{ file = "{EMPTY_DIGEST.hex()}", size = 0, executable = true }}
link = {{ symlink = "dep" }}
"odd link" = {{ symlink = {{ hex = "ff" }} }}

[additional_files]
"build/.attr-1" = "data"
"build/.attr-0" = {{ base64 = "AAE=" }}
""",
    )
    m = loaded.message
    assert list(m.command_args) == ["/bin/sh", "-c", "true"]
    assert (m.working_dir, m.inputs_dir) == ("build", "nix/store")
    assert list(m.scratch_paths) == ["build", "nix/store"]
    assert list(m.outputs) == ["nix/store/out"]
    assert list(m.refscan_needles) == ["abc"]
    # A table has no order; the protocol's order is by key.
    assert [(v.key, v.value) for v in m.environment_vars] == [
        ("BIN", b"\xff"),
        ("HEX", b"\x01\xff"),
        ("out", b"/nix/store/out"),
    ]
    c = m.constraints
    assert (c.system, c.min_memory, list(c.available_ro_paths)) == (
        "x86_64-linux",
        2**64 - 1,
        ["/dev/kvm"],
    )
    assert c.network_access and c.provide_bin_sh
    assert [n.WhichOneof("entry") for n in m.inputs] == ["directory", "symlink", "symlink", "file"]
    assert m.inputs[0].directory.name == b"dep"
    assert m.inputs[0].directory.digest == EMPTY_DIGEST
    assert (m.inputs[1].symlink.name, m.inputs[1].symlink.target) == (b"link", b"dep")
    assert (m.inputs[2].symlink.name, m.inputs[2].symlink.target) == (b"odd link", b"\xff")
    assert m.inputs[3].file.executable
    assert [(f.path, f.contents) for f in m.additional_files] == [
        ("build/.attr-1", b"data"),
        ("build/.attr-0", b"\x00\x01"),
    ]
    assert loaded.imports == ()
    request_from_proto(m).validate()


def test_host_paths_are_taken_from_the_files_directory(tmp_path: Path) -> None:
    directory = tmp_path / "project"
    (directory / "src").mkdir(parents=True)
    (directory / "hello.c").write_text("int main;")
    text = MINIMAL + '\n[inputs]\nsrc = { path = "src" }\n"hello.c" = { path = "./hello.c" }\n'
    text += f'abs = {{ path = "{tmp_path}" }}\n'
    loaded = load_request_file(write(directory, "req.toml", text))
    assert loaded.imports == (
        HostImport("abs", tmp_path),
        HostImport("hello.c", directory / "hello.c"),
        HostImport("src", directory / "src"),
    )
    assert not loaded.message.inputs


def test_host_paths_are_absolute_when_the_file_is_named_relatively(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """So that ``request show`` prints paths that hold wherever its output is saved."""
    (tmp_path / "project" / "src").mkdir(parents=True)
    write(tmp_path / "project", "req.toml", MINIMAL + '[inputs]\nsrc = { path = "src" }\n')
    monkeypatch.chdir(tmp_path)
    loaded = load_request_file(Path("project/req.toml"))
    assert loaded.imports == (HostImport("src", tmp_path / "project" / "src"),)
    rendered = render_request_file(loaded, "toml")
    assert f'src = {{ path = "{tmp_path}/project/src" }}' in rendered


def test_a_missing_host_path_is_named(tmp_path: Path) -> None:
    message = refusal(tmp_path, MINIMAL + '[inputs]\nsrc = { path = "gone" }\n')
    assert f"inputs.src.path: {tmp_path}/gone does not exist" in message


@pytest.mark.parametrize(
    ("body", "where", "problem"),
    [
        ('command_args = "/bin/sh"', "command_args", "expected an array of strings, got a string"),
        ('command_args = ["/bin/sh", 1]', "command_args[1]", "expected a string, got an integer"),
        ("working_dir = 1", "working_dir", "expected a string, got an integer"),
        ("inputs_dir = true", "inputs_dir", "expected a string, got a boolean"),
        ("scratch_paths = [[]]", "scratch_paths[0]", "expected a string, got an array"),
        ("outputs = {}", "outputs", "expected an array of strings, got a table"),
        ("refscan_needles = [1.5]", "refscan_needles[0]", "expected a string, got a float"),
        ("environment_vars = []", "environment_vars", "expected a table, got an array"),
        ("environment_vars = { A = 1 }", "environment_vars.A", "expected a string, {"),
        ('environment_vars = { A = { b64 = "" } }', "environment_vars.A", "base64 or hex"),
        (
            'environment_vars = { A = { base64 = "", hex = "" } }',
            "environment_vars.A",
            "exactly one key",
        ),
        ('environment_vars = { A = { hex = "0g" } }', "environment_vars.A.hex", "not hex"),
        ('environment_vars = { A = { base64 = "L2Jpbg" } }', "environment_vars.A.base64", ""),
        ('environment_vars = { A = { base64 = "L2Jpbh==" } }', "environment_vars.A.base64", ""),
        ("environment_vars = { A = { hex = 1 } }", "environment_vars.A.hex", "got an integer"),
        ('environment_vars = { "A B" = 1 }', 'environment_vars."A B"', "expected a string"),
        ('constraints = "x86_64-linux"', "constraints", "expected a table, got a string"),
        ("constraints = { system = 1 }", "constraints.system", "expected a string"),
        ("constraints = { min_memory = -1 }", "constraints.min_memory", "out of range"),
        (f"constraints = {{ min_memory = {2**64} }}", "constraints.min_memory", "out of range"),
        ('constraints = { min_memory = "1G" }', "constraints.min_memory", "expected an integer"),
        ("constraints = { min_memory = true }", "constraints.min_memory", "got a boolean"),
        ("constraints = { min_memory = 1979-05-27 }", "constraints.min_memory", "got a date"),
        ('constraints = { network_access = "yes" }', "constraints.network_access", "true or"),
        ("constraints = { provide_bin_sh = 1 }", "constraints.provide_bin_sh", "true or false"),
        ('constraints = { available_ro_paths = "/dev" }', "constraints.available_ro_paths", ""),
        ("inputs = []", "inputs", "expected a table"),
        ('inputs = { src = "./src" }', "inputs.src", "expected a table such as"),
        ("inputs = { src = {} }", "inputs.src", "exactly one of directory, file, symlink, path"),
        (
            'inputs = { src = { path = "a", symlink = "b" } }',
            "inputs.src",
            "exactly one of directory, file, symlink, path, not 2",
        ),
        ("inputs = { src = { path = 1 } }", "inputs.src.path", "expected a string"),
        ('inputs = { src = { path = "" } }', "inputs.src.path", "empty"),
        ('inputs = { l = { symlink = ["a"] } }', "inputs.l.symlink", "expected a string, {"),
        ('inputs = { d = { directory = "blake3-x", size = 1 } }', "inputs.d.directory", "digest"),
        ('inputs = { d = { directory = "abc", size = 1 } }', "inputs.d.directory", "digest"),
        (f'inputs = {{ d = {{ directory = "{EMPTY_DIGEST}" }} }}', "inputs.d.size", "missing"),
        (
            f'inputs = {{ d = {{ file = "{EMPTY_DIGEST}", size = -1 }} }}',
            "inputs.d.size",
            "out of range",
        ),
        (
            f'inputs = {{ d = {{ file = "{EMPTY_DIGEST}", size = 0, executable = 1 }} }}',
            "inputs.d.executable",
            "true or false",
        ),
        ("additional_files = []", "additional_files", "expected a table"),
        ('additional_files = { "build/x" = 1 }', 'additional_files."build/x"', "expected"),
    ],
)
def test_wrong_types_and_ranges_name_the_key(
    tmp_path: Path, body: str, where: str, problem: str
) -> None:
    message = refusal(tmp_path, body + "\n")
    assert f"req.toml: {where}: " in message
    assert problem in message


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ("command = []", "command"),
        ("environment = { A = 'b' }", "environment"),
        ("constraints = { systems = 'x' }", "constraints.systems"),
        ("inputs = { d = { path = '.', size = 1 } }", "inputs.d.size"),
        ("inputs = { d = { symlink = 'x', executable = true } }", "inputs.d.executable"),
        (f"inputs = {{ d = {{ file = '{EMPTY_DIGEST}', size = 0, mode = 1 }} }}", "inputs.d.mode"),
        ('"odd key" = 1', '"odd key"'),
    ],
)
def test_unknown_keys_are_errors(tmp_path: Path, body: str, where: str) -> None:
    message = refusal(tmp_path, body + "\n")
    assert f"req.toml: {where}: unknown key; expected one of " in message


def test_validation_names_the_key_written(tmp_path: Path) -> None:
    """The message goes through the one request validation, whose fields are the TOML keys."""
    loaded = load_toml(tmp_path, MINIMAL.replace('working_dir = "build"', 'working_dir = "/abs"'))
    with pytest.raises(InvalidArgumentError, match="working_dir: '/abs' must be relative"):
        request_from_proto(loaded.message).validate()


# Rendering and round trips


@pytest.mark.parametrize("name", ["hello.toml", "additional-files.toml", "compile-c.toml"])
def test_examples_round_trip(name: str) -> None:
    """TOML → message → TOML → message gives what was written, host paths included."""
    loaded = load_request_file(EXAMPLES / name)
    text = render_request_toml(loaded.message, loaded.imports)
    message, imports = parse_request_toml(text, EXAMPLES)
    assert message == loaded.message
    assert imports == loaded.imports
    assert render_request_toml(message, imports) == text


def test_protobuf_forms_round_trip(tmp_path: Path) -> None:
    loaded = load_request_file(EXAMPLES / "hello.toml")
    for form, suffix in (("json", ".json"), ("txtpb", ".txtpb"), ("toml", ".toml")):
        path = write(tmp_path, "again" + suffix, render_request_file(loaded, form))
        assert load_request_file(path).message == loaded.message, form


def test_host_paths_have_no_protobuf_form(tmp_path: Path) -> None:
    loaded = RequestFile(snix_build.BuildRequest(), (HostImport("src", tmp_path),))
    with pytest.raises(
        InvalidArgumentError, match=r"inputs\.src: a host path to import has no json"
    ):
        render_request_file(loaded, "json")


def test_a_name_that_is_not_utf8_cannot_be_a_toml_key() -> None:
    message = snix_build.BuildRequest()
    message.inputs.add().symlink.name = b"\xff"
    with pytest.raises(InvalidArgumentError, match=r"inputs\[0\]: name b'\\xff' is not UTF-8"):
        render_request_toml(message)


# Any text TOML can hold: every code point but surrogates.
texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
names = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=10)


@settings(max_examples=200, deadline=None)
@given(
    args=st.lists(texts, max_size=4),
    environment=st.dictionaries(names, st.one_of(st.binary(max_size=20), texts.map(str.encode))),
    files=st.dictionaries(names, st.binary(max_size=20)),
    links=st.dictionaries(names, st.binary(min_size=1, max_size=20)),
    memory=st.integers(0, 2**63 - 1),
    flags=st.tuples(st.booleans(), st.booleans(), st.booleans(), st.booleans()),
)
def test_any_message_round_trips_through_toml(
    args: list[str],
    environment: dict[str, bytes],
    files: dict[str, bytes],
    links: dict[str, bytes],
    memory: int,
    flags: tuple[bool, bool, bool, bool],
) -> None:
    """Whatever the strings and bytes, the TOML written reads back as the same message."""
    message = snix_build.BuildRequest(
        command_args=args,
        working_dir=args[0] if args else "",
        refscan_needles=args[1:],
        environment_vars=[
            snix_build.BuildRequest.EnvVar(key=key, value=environment[key])
            for key in sorted(environment)
        ],
        constraints=snix_build.BuildRequest.BuildConstraints(
            system="x86_64-linux",
            min_memory=memory,
            network_access=flags[0],
            provide_bin_sh=flags[1],
        ),
        additional_files=[
            snix_build.BuildRequest.AdditionalFile(path=path, contents=contents)
            for path, contents in files.items()
        ],
    )
    nodes = [(name.encode(), "symlink") for name in links]
    if flags[2]:
        # Longer than any generated name, so distinct from them.
        nodes.append(("\U0010ffff".encode() * 11, "file"))
    for name, kind in sorted(nodes):
        node = message.inputs.add()
        if kind == "symlink":
            node.symlink.name = name
            node.symlink.target = links[name.decode()]
        else:
            node.file.name = name
            node.file.digest = EMPTY_DIGEST
            node.file.executable = True
    if flags[3]:
        message.ClearField("constraints")
    text = render_request_toml(message)
    assert parse_request_toml(text, Path("/"))[0] == message


def test_the_readme_example_reads(tmp_path: Path) -> None:
    readme = (EXAMPLES.parent / "README.md").read_text()
    section = readme[readme.index("### Writing a request") :]
    example = section[section.index("```toml\n") + 8 : section.index("```\n", 10)]
    (tmp_path / "hello.c").write_text("int main(void) { return 0; }\n")
    loaded = load_toml(tmp_path, example)
    request_from_proto(loaded.message).validate()
    assert [i.name for i in loaded.imports] == ["bin", "hello.c"]
    assert loaded.imports[1].path == tmp_path / "hello.c"
    assert loaded.message.environment_vars[0].value == b"\xca\xfe\xff"


@pytest.mark.parametrize(
    ("text", "written"),
    [
        ("plain", '"plain"'),
        ('grep "\\d+" C:\\dir', "'grep \"\\d+\" C:\\dir'"),
        ("it's", '"it\'s"'),
        ("it's \\", '"it\'s \\\\"'),
        ("tab\tand\x7f\n", '"tab\tand\\u007f\\n"'),
    ],
)
def test_strings_are_written_the_simplest_way_toml_allows(text: str, written: str) -> None:
    message = snix_build.BuildRequest(command_args=[text])
    rendered = render_request_toml(message)
    assert rendered.startswith(f"command_args = [{written}]\n")
    assert parse_request_toml(rendered, Path("/"))[0] == message
