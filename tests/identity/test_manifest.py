import json

import pytest

from envhub.errors import ManifestError
from envhub.identity.manifest import Manifest, load_manifest

GOOD = """
namespace = "acme"
name = "word-game"
version = "1.2.0"
entrypoint = "game:make_env"
max_turns = 6
[limits]
memory_mb = 128
"""


def test_good_manifest_with_defaults():
    m = Manifest.from_toml(GOOD)
    assert m.ref == "acme/word-game@1.2.0"
    assert m.limits.memory_mb == 128 and m.limits.step_timeout_s == 30.0
    assert m.dataset.splits == ["train", "test"]


def test_every_bad_field_is_named():
    bad = """
name = "Word Game"
version = "1.2"
entrypoint = "game"
max_turns = 0
colour = "blue"
[limits]
memory_mb = "lots"
"""
    with pytest.raises(ManifestError) as info:
        Manifest.from_toml(bad, source="x/envhub.toml")
    text = str(info.value)
    for field in ("`name`", "`version`", "`entrypoint`", "`max_turns`", "`colour`: unknown field", "`limits.memory_mb`"):
        assert field in text, field
    assert len(info.value.problems) == 6


def test_missing_required_and_bad_toml(tmp_path):
    with pytest.raises(ManifestError, match="`entrypoint`: Field required"):
        Manifest.from_toml('name = "a"\nversion = "1.0.0"')
    with pytest.raises(ManifestError, match="not valid TOML"):
        Manifest.from_toml('name = "a')
    with pytest.raises(ManifestError, match="file not found"):
        load_manifest(tmp_path)


def test_dependencies_are_names_extras_and_version_specifiers_only():
    good = '"numpy>=1.24", "requests[socks,security] >=2.0, <3", "rich", "a.b_c-d~=1.4.2", "x===1.0+local"'
    ok = Manifest.from_toml(GOOD.replace("max_turns = 6", f"max_turns = 6\ndependencies = [{good}]"))
    assert ok.dependencies[1] == "requests[socks,security] >=2.0, <3"
    bad = {
        "--index-url https://evil.example/simple": "pip option",
        "-e .": "pip option",
        "pkg @ https://evil.example/pkg-1.0.tar.gz": "URL",
        "git+https://evil.example/pkg.git": "URL",
        "./vendored/pkg": "path",
        "/opt/pkg-1.0.tar.gz": "path",
        "pkg==1.0 --hash=sha256:00": "not a requirement",
        "pkg; os_name == 'posix'": "marker",
    }
    lines = "".join(f"{json.dumps(entry)}, " for entry in bad)
    text = GOOD.replace('max_turns = 6', f"max_turns = 6\ndependencies = [\"numpy\", {lines}]")
    with pytest.raises(ManifestError) as info:
        Manifest.from_toml(text, source="x/envhub.toml")
    message = str(info.value)
    assert "`dependencies`" in message
    for entry, kind in bad.items():
        assert repr(entry) in message and kind in message.split(repr(entry), 1)[1].split("; ")[0], (entry, kind, message)
    assert "'numpy'" not in message


def test_reply_stop_strings_are_read_and_checked():
    assert Manifest.from_toml(GOOD).generation.stop == []  # none unless the author sets them
    m = Manifest.from_toml(GOOD + '[generation]\nstop = ["</answer>", "\\n\\nUser:"]\n')
    assert m.generation.stop == ["</answer>", "\n\nUser:"]
    with pytest.raises(ManifestError, match=r"`generation.stop`: '': each stop string must have 1 to 64 characters"):
        Manifest.from_toml(GOOD + '[generation]\nstop = ["</answer>", ""]\n')
    with pytest.raises(ManifestError, match="`generation.stop`"):
        Manifest.from_toml(GOOD + "[generation]\nstop = " + json.dumps([f"<s{i}>" for i in range(9)]) + "\n")
    with pytest.raises(ManifestError, match=r"`generation.stops`: unknown field"):
        Manifest.from_toml(GOOD + '[generation]\nstops = ["</answer>"]\n')
