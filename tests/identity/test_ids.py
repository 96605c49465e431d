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
