"""Environment ids and versions: the one name and version grammar of the SDK and the hub.

An id is ``[namespace/]name[@version-spec]``, parsed by one regex into :class:`EnvId`. A version
spec is an exact version (``1.2.0``), a prefix (``1`` or ``1.2``: the newest that starts so),
a caret or tilde range (``^1.2``, ``~1.2``), ``latest``, or a digest pin (``sha256:<hex>``).

A version is ``MAJOR.MINOR.PATCH`` with an optional semver pre-release (``1.2.0-rc.1``), at most
64 characters. Build metadata (``1.2.0+build1``) is not part of it: semver orders ``1.2.0+a`` and
``1.2.0+b`` alike, so two artifacts would share one version. Every accepted version is written
back exactly as given (``str(Version.parse(v)) == v``), so a version is also its own key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering

from envhub.errors import InvalidEnvIdError

DEFAULT_NAMESPACE = "envhub"

_NAME = r"[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?"
_NUMBER = r"(?:0|[1-9][0-9]*)"  # ASCII digits only: `\d` would take any script's digits
_PRE_PART = r"(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
_VERSION = rf"({_NUMBER})\.({_NUMBER})\.({_NUMBER})(?:-({_PRE_PART}(?:\.{_PRE_PART})*))?"
MAX_VERSION_LENGTH = 64  # the hub stores versions in 64 characters

# `\Z`, not `$`, which also matches before a final newline.
ENV_ID_RE = re.compile(rf"^(?:(?P<namespace>{_NAME})/)?(?P<name>{_NAME})(?:@(?P<version>[^\s@/]+))?\Z")
NAME_RE = re.compile(rf"^{_NAME}\Z")
SEMVER_RE = re.compile(rf"^(?=.{{1,{MAX_VERSION_LENGTH}}}\Z){_VERSION}\Z")
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}\Z")

#: The same grammars for JSON Schema (the hub's API), whose `$` ends the text; the hub adds
#: ``max_length=MAX_VERSION_LENGTH`` beside the version's.
NAME_PATTERN = rf"^{_NAME}$"
VERSION_PATTERN = rf"^{_VERSION}$"


@dataclass(frozen=True)
class EnvId:
    """A parsed environment id. ``version`` is the spec as written, or None."""

    namespace: str | None
    name: str
    version: str | None = None

    @property
    def full_name(self) -> str:
        return f"{self.namespace or DEFAULT_NAMESPACE}/{self.name}"

    def __str__(self) -> str:
        head = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return f"{head}@{self.version}" if self.version else head


def parse_env_id(env_id: str) -> EnvId:
    """Parse ``[namespace/]name[@version]``; raise :class:`InvalidEnvIdError` naming what is wrong."""
    if not isinstance(env_id, str) or not env_id:
        raise InvalidEnvIdError(str(env_id), "it is empty")
    match = ENV_ID_RE.match(env_id)
    if match is None:
        raise InvalidEnvIdError(
            env_id, "names use lowercase letters, digits, '.', '_' and '-', and start and end alphanumeric"
        )
    version = match["version"]
    if version is not None and not is_version_spec(version):
        if "+" in version:
            raise InvalidEnvIdError(env_id, version_problem(version))
        raise InvalidEnvIdError(env_id, f"{version!r} is not a version, a range (^1.2, ~1.2), `latest` or sha256:<hex>")
    return EnvId(match["namespace"], match["name"], version)


@total_ordering
@dataclass(frozen=True)
class Version:
    """A semantic version, ordered as semver orders them (pre-releases before the release)."""

    major: int
    minor: int
    patch: int
    pre: str | None = None

    @classmethod
    def parse(cls, text: str) -> Version:
        match = SEMVER_RE.match(text) if isinstance(text, str) else None
        if match is None:
            raise ValueError(version_problem(text))
        major, minor, patch, pre = match.groups()
        return cls(int(major), int(minor), int(patch), pre)

    def _key(self) -> tuple:
        pre = () if self.pre is None else tuple((0, int(p)) if p.isdigit() else (1, p) for p in self.pre.split("."))
        # A release sorts after all of its pre-releases.
        return (self.major, self.minor, self.patch, self.pre is None, pre)

    def __lt__(self, other: Version) -> bool:
        return self._key() < other._key()

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}" + (f"-{self.pre}" if self.pre else "")


def is_version(text: str) -> bool:
    """Whether ``text`` is a version of the grammar (exact: no range, no build metadata)."""
    return isinstance(text, str) and SEMVER_RE.match(text) is not None


def version_problem(text: object) -> str:
    """Why ``text`` is not a version, in words that say what to write instead."""
    if isinstance(text, str) and "+" in text and is_version(text.partition("+")[0]):
        base = text.partition("+")[0]
        return (
            f"{text!r} has build metadata, which envhub versions do not take (semver ranks {base}+a and "
            f"{base}+b alike): publish it as {base}, or as a new version"
        )
    if isinstance(text, str) and len(text) > MAX_VERSION_LENGTH:
        return f"a version is at most {MAX_VERSION_LENGTH} characters; this one has {len(text)}"
    return f"{text!r} is not a semantic version like 1.2.0 or 1.2.0-rc.1"


def is_version_spec(spec: str) -> bool:
    return spec == "latest" or bool(DIGEST_RE.match(spec)) or is_version(spec) or _range(spec) is not None


def _range(spec: str) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """The half-open interval [low, high) of (major, minor, patch) that a non-exact spec admits."""
    op = spec[0] if spec[:1] in ("^", "~") else ""
    parts = spec[len(op) :].split(".")
    if len(spec) > MAX_VERSION_LENGTH or not 1 <= len(parts) <= 3 or not all(p.isascii() and p.isdigit() for p in parts):
        return None
    nums = [int(p) for p in parts]
    low = tuple(nums + [0] * (3 - len(nums)))
    if op == "^":
        # Caret: the left-most non-zero component stays fixed.
        idx = next((i for i, n in enumerate(nums) if n != 0), len(nums) - 1)
    elif op == "~":
        idx = 1 if len(nums) >= 2 else 0
    else:
        idx = len(nums) - 1  # a prefix: 1.2 admits 1.2.x, 1.2.3 admits only itself
    high = list(low[: idx + 1])
    high[idx] += 1
    return low, tuple(high + [0] * (3 - len(high)))


def match_version(spec: str | None, versions: list[str], *, digests: dict[str, str] | None = None) -> str | None:
    """The newest of ``versions`` that ``spec`` admits (None: the newest release), or None.

    A version outside the grammar (an older registry may list ``1.0.0+build1``) is never chosen.
    """
    versions = [v for v in versions if is_version(v)]
    parsed = sorted((Version.parse(v) for v in versions), reverse=True)
    if spec is None or spec == "latest":
        releases = [v for v in parsed if v.pre is None]
        best = releases or parsed
        return str(best[0]) if best else None
    if DIGEST_RE.match(spec):
        return next((v for v, d in (digests or {}).items() if d == spec and v in versions), None)
    if spec in versions:
        return spec
    interval = _range(spec)
    if interval is None:
        return None
    low, high = interval
    for v in parsed:
        if v.pre is None and low <= (v.major, v.minor, v.patch) < high:
            return str(v)
    return None
