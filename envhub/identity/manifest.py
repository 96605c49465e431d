"""``envhub.toml``: an environment's manifest, read into a pydantic model, and its identity.

Example::

    namespace = "envhub"
    name = "arithmetic"
    version = "1.0.0"
    description = "Single-turn arithmetic with exact answers."
    entrypoint = "arithmetic_env:make_env"
    license = "Apache-2.0"
    tags = ["math", "single-turn"]
    max_turns = 1
    dependencies = []

    [dataset]
    kind = "generated"

    [rubric]
    summary = "exact answer (0.9) + answer format (0.1)"

    [limits]
    memory_mb = 512
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from envhub.errors import ManifestError
from envhub.identity.ids import NAME_RE, Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MANIFEST_FILE = "envhub.toml"

# A dependency is a project name, optional extras and optional version specifiers: nothing that
# points pip at a URL, a path or another index, so building an image fetches only published wheels.
_PROJECT = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_SPECIFIER = r"(?:~=|===|==|!=|<=|>=|<|>)\s*[A-Za-z0-9*][A-Za-z0-9.*+!_-]*"
REQUIREMENT_RE = re.compile(
    rf"^\s*{_PROJECT}\s*(?:\[\s*{_PROJECT}(?:\s*,\s*{_PROJECT})*\s*\])?"
    rf"\s*(?:{_SPECIFIER}(?:\s*,\s*{_SPECIFIER})*)?\s*$"
)


def requirement_problem(text: str) -> str | None:
    """Why ``text`` is not an accepted dependency, or None when it is one."""
    if REQUIREMENT_RE.match(text):
        return None
    stripped = text.strip()
    if stripped.startswith("-"):
        return "a pip option"
    if "@" in stripped or "://" in stripped:
        return "a URL"
    if stripped.startswith((".", "/", "~")) or "/" in stripped or "\\" in stripped:
        return "a path"
    if ";" in stripped:
        return "an environment marker"
    return "not a requirement"


class Dataset(BaseModel):
    """Where the tasks come from."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field("generated", description="`generated`, `file` (shipped in the folder) or `hf` (a datasets id)")
    path: str | None = Field(None, description="file inside the folder, or datasets id, when kind is not generated")
    splits: list[str] = Field(default_factory=lambda: ["train", "test"])


class RubricSummary(BaseModel):
    """A human summary of the rubric; the rubric itself is code, hashed at load time."""

    model_config = ConfigDict(extra="forbid")

    summary: str = ""
    judge: bool = Field(False, description="true when a criterion is an LLM judge")


class Limits(BaseModel):
    """Runtime limits. The docker runtime enforces all of them; the process runtime the step timeout,
    memory as address space, and pids and cpus only where it can make a cgroup (:mod:`envhub.runtime.process`)."""

    model_config = ConfigDict(extra="forbid")

    memory_mb: int = Field(512, ge=16, le=1_048_576)
    cpus: float = Field(1.0, gt=0, le=256)
    pids: int = Field(128, ge=8, le=65_536)
    step_timeout_s: float = Field(30.0, gt=0, le=3600)


class GenerationSettings(BaseModel):
    """How a model's replies to this environment are decoded, wherever it runs (trainer, evaluation)."""

    model_config = ConfigDict(extra="forbid")

    stop: list[str] = Field(
        default_factory=list,
        max_length=8,
        description="strings that end an assistant reply, kept in it (e.g. `</answer>`): decoding stops at the "
        "token that completes one, so the reply does not run on past the answer",
    )

    @field_validator("stop")
    @classmethod
    def _non_empty(cls, value: list[str]) -> list[str]:
        bad = [s for s in value if not s or len(s) > 64]
        if bad:
            raise ValueError(f"{bad[0]!r}: each stop string must have 1 to 64 characters")
        return value


class RuntimeSettings(BaseModel):
    """Where the environment's dependencies live, when not in envhub's own interpreter."""

    model_config = ConfigDict(extra="forbid")

    python: str | None = Field(
        None,
        description="the interpreter whose packages hold `dependencies` (a virtual environment of its own, for a "
        "source whose pins conflict with envhub's); the environment runs its source there. Unset: envhub's own",
    )


class Manifest(BaseModel):
    """The contents of ``envhub.toml``."""

    model_config = ConfigDict(extra="forbid")

    namespace: str = "local"
    name: str
    version: str
    description: str = ""
    entrypoint: str = Field(description="`module:factory`, the module importable from the folder")
    license: str = "Apache-2.0"
    tags: list[str] = Field(default_factory=list)
    max_turns: int = Field(1, ge=1, le=10_000)
    dependencies: list[str] = Field(default_factory=list, description="pip requirement strings")
    python: str = ">=3.10"
    dataset: Dataset = Field(default_factory=Dataset)
    rubric: RubricSummary = Field(default_factory=RubricSummary)
    limits: Limits = Field(default_factory=Limits)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)

    @field_validator("namespace", "name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not NAME_RE.match(value):
            raise ValueError("use lowercase letters, digits, '.', '_' and '-', starting and ending alphanumeric")
        return value

    @field_validator("version")
    @classmethod
    def _valid_version(cls, value: str) -> str:
        Version.parse(value)
        return value

    @field_validator("entrypoint")
    @classmethod
    def _valid_entrypoint(cls, value: str) -> str:
        module, sep, attr = value.partition(":")
        if not sep or not module or not attr or not all(p.isidentifier() for p in module.split(".") + attr.split(".")):
            raise ValueError("must be `module:factory`, e.g. `my_env:make_env`")
        return value

    @field_validator("dependencies")
    @classmethod
    def _plain_requirements(cls, value: list[str]) -> list[str]:
        bad = [f"{entry!r} is {why}" for entry in value if (why := requirement_problem(entry))]
        if bad:
            raise ValueError(
                "; ".join(bad) + " (give a project name, extras and version specifiers only, e.g. "
                "`numpy>=1.24` or `requests[socks]<3`; publish anything else to a package index as a wheel)"
            )
        return value

    @property
    def full_name(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}@{self.version}"

    @classmethod
    def from_toml(cls, text: str, *, source: str = MANIFEST_FILE) -> Manifest:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ManifestError(source, [f"not valid TOML: {exc}"]) from exc
        return cls.from_dict(data, source=source)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = MANIFEST_FILE) -> Manifest:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = []
            for err in exc.errors():
                where = ".".join(str(p) for p in err["loc"]) or "(top level)"
                msg = err["msg"].removeprefix("Value error, ")
                if err["type"] == "extra_forbidden":
                    msg = "unknown field (check its spelling)"
                problems.append(f"`{where}`: {msg}")
            raise ManifestError(source, problems) from None


def load_manifest(folder: str | Path) -> Manifest:
    """Read ``FOLDER/envhub.toml``; every problem is named in the :class:`ManifestError`."""
    path = Path(folder) / MANIFEST_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(str(path), ["file not found (an environment folder needs an envhub.toml)"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(str(path), [f"cannot be read: {exc}"]) from exc
    return Manifest.from_toml(text, source=str(path))


def reply_stops(env: Any) -> tuple[str, ...]:
    """The strings that end a reply to ``env`` (its manifest's ``[generation] stop``); none when it
    has no manifest (an environment built in code)."""
    manifest = getattr(env, "manifest", None)
    return tuple(manifest.generation.stop) if isinstance(manifest, Manifest) else ()


@dataclass(frozen=True)
class EnvIdentity:
    """Who an environment is: ``namespace/name@version`` and the sha256 digest of its artifact."""

    namespace: str
    name: str
    version: str
    digest: str | None

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "name": self.name, "version": self.version, "digest": self.digest}
