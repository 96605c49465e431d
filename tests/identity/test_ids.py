import pytest

from envhub.errors import InvalidEnvIdError
from envhub.identity.ids import EnvId, Version, match_version, parse_env_id

VERSIONS = ["0.9.0", "1.0.0", "1.2.0", "1.2.5", "1.10.1", "2.0.0-rc.1", "2.0.0"]


def test_parse():
    assert parse_env_id("arithmetic") == EnvId(None, "arithmetic", None)
    assert parse_env_id("acme/sql-v2@^1.2") == EnvId("acme", "sql-v2", "^1.2")
    assert str(parse_env_id("acme/sql@1.0.0")) == "acme/sql@1.0.0"
    for bad in ("", "Acme/x", "a/b/c", "x@", "x@banana", "-x"):
        with pytest.raises(InvalidEnvIdError):
            parse_env_id(bad)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, "2.0.0"),
        ("latest", "2.0.0"),
        ("1", "1.10.1"),
        ("1.2", "1.2.5"),
        ("1.2.0", "1.2.0"),
        ("^1.2", "1.10.1"),
        ("~1.2", "1.2.5"),
        ("^0.9", "0.9.0"),
        ("2.0.0-rc.1", "2.0.0-rc.1"),
        ("3", None),
    ],
)
def test_match_version(spec, expected):
    assert match_version(spec, VERSIONS) == expected


def test_semver_order_and_digest_pins():
    assert Version.parse("2.0.0-rc.1") < Version.parse("2.0.0") < Version.parse("10.0.0")
    digest = "sha256:" + "a" * 64
    assert match_version(digest, VERSIONS, digests={"1.2.0": digest}) == "1.2.0"


def test_one_version_grammar_without_build_metadata():
    from envhub.identity.ids import MAX_VERSION_LENGTH, is_version, is_version_spec

    for good in ("0.0.0", "1.2.3", "1.2.3-rc.1", "1.2.3-alpha-2.x", "10.20.30-0.1"):
        assert is_version(good) and str(Version.parse(good)) == good  # a version is its own key
    longest = "1.0.0-" + "a" * (MAX_VERSION_LENGTH - 6)
    assert is_version(longest) and not is_version(longest + "a")
    for bad in ("0.3.0+build1", "1.0.0-rc.1+b", "01.0.0", "1.0.0-01", "1.0.0-a..b", "1.0", "1.0.0\n", "\u0661.0.0", ""):
        assert not is_version(bad), bad
        with pytest.raises(ValueError):
            Version.parse(bad)
    with pytest.raises(ValueError, match="build metadata.*publish it as 0.3.0"):
        Version.parse("0.3.0+build1")
    with pytest.raises(InvalidEnvIdError, match="build metadata"):
        parse_env_id("acme/x@0.3.0+build1")
    assert not is_version_spec("\u0661.2") and not is_version_spec("1" * 5000)
    for bad_id in ("arithmetic\n", "acme/x@1.0.0\n"):
        with pytest.raises(InvalidEnvIdError):
            parse_env_id(bad_id)


def test_versions_outside_the_grammar_are_never_chosen():
    # An older registry may list one; it is left out rather than crashing or shadowing a real version.
    assert match_version(None, ["0.3.0+build1", "0.2.0"]) == "0.2.0"
    assert match_version("0.3", ["0.3.0+a", "0.3.0+b"]) is None
