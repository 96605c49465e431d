"""What every kind of ``envhub import`` shares: its options, the installed source, the folder it describes."""

from __future__ import annotations

import importlib
import importlib.metadata
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from envhub.errors import ImportSourceError, suggest

_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(.*?)\s*$")


@dataclass(frozen=True)
class Option:
    """One command-line option of a kind: ``--name VALUE`` (or a bare ``--name`` when ``flag``)."""

    name: str
    help: str
    parse: Callable[[str], Any] = str
    default: Any = None
    required: bool = False
    flag: bool = False
    repeat: bool = False  # given several times, the values are collected in a list
    choices: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return self.name.replace("-", "_")


@dataclass(frozen=True)
class Source:
    """The package a kind imports from, as installed here, and the module it was imported as."""

    kind: str
    text: str  # what the user wrote: `reasoning-gym` or `reasoning-gym==0.1.25`
    package: str
    version: str
    module: ModuleType | None

    pinned: str = ""  # for a source that is no package (a folder of tasks): its digest

    @property
    def requirement(self) -> str:
        """The exact pin the generated manifest lists in ``dependencies`` ("" for no package)."""
        return f"{self.package}=={self.version}" if self.package else ""

    @property
    def label(self) -> str:
        return f"{self.package} {self.version}" if self.package else f"{self.text} ({self.pinned})"

    @property
    def pinned_where(self) -> str:
        if self.package:
            return "pinned in `envhub.toml` under `dependencies`"
        return "its files copied into this folder, their digest in the module's SETTINGS"


@dataclass
class Generated:
    """What a kind's ``build`` says about the folder to write; the writer renders the files."""

    name: str  # default environment name, when --name gives none
    description: str
    class_name: str  # the runtime adapter's class, imported by the generated module
    runtime_module: str  # where it lives, e.g. envhub.authoring.importers.reasoning_gym_runtime
    settings: dict[str, Any]  # the adapter's keyword arguments, written into the module
    max_turns: int
    rubric_summary: str
    readme: str  # the kind-specific body of the README: what was imported and how it is scored
    tags: list[str] = field(default_factory=list)
    step_timeout_s: float = 30.0
    memory_mb: int = 512
    pass_folder: bool = False  # the adapter takes `folder=` (the environment's own folder, for its files)
    files: dict[str, str | bytes] = field(default_factory=dict)  # more files of the folder: relative path -> text or bytes
    tests: str = ""  # test functions of the kind, appended to the folder's tests
    license: str | None = None  # the environment's license, where the source's package metadata gives none
    python: str = ""  # the interpreter holding the source, when not envhub's own (the manifest's [runtime] python)


def parse_options(kind: str, options: tuple[Option, ...], given: dict[str, Any]) -> dict[str, Any]:
    """``given`` (option name or key -> raw value) checked and parsed against the kind's ``options``."""
    by_key = {o.key: o for o in options}
    out: dict[str, Any] = {}
    for raw_key, value in given.items():
        key = raw_key.lstrip("-").replace("-", "_")
        option = by_key.get(key)
        if option is None:
            near = suggest(key.replace("_", "-"), [o.name for o in options])
            did_you_mean = f" Did you mean `--{near[0]}`?" if near else ""
            known = ", ".join(f"--{o.name}" for o in options)
            raise ImportSourceError(
                kind, kind, f"`--{key.replace('_', '-')}` is not an option of this kind.{did_you_mean}",
                hint=f"the options of {kind}: {known} (`envhub import --help` lists them with their meaning)",
            )
        values = value if isinstance(value, list) else [value]
        parsed = [_parse_one(kind, option, v) for v in values]
        out[option.key] = parsed if option.repeat else parsed[-1]
    for option in options:
        if option.key not in out:
            if option.required:
                raise ImportSourceError(kind, kind, f"`--{option.name}` is required: {option.help}")
            out[option.key] = [] if option.repeat and option.default is None else option.default
    return out


def _parse_one(kind: str, option: Option, value: Any) -> Any:
    if option.flag:
        return bool(value)
    if option.choices and value not in option.choices:
        raise ImportSourceError(kind, kind, f"`--{option.name} {value}`: choose one of {', '.join(option.choices)}")
    try:
        return option.parse(value) if isinstance(value, str) else value
    except (TypeError, ValueError) as exc:
        raise ImportSourceError(kind, kind, f"`--{option.name} {value}`: {exc}") from None


def installed_source(kind: str, text: str, *, package: str, module: str, supported: str) -> Source:
    """The installed ``package`` named by ``text`` (``name`` or ``name==version``), imported.

    ImportSourceError when ``text`` names another package, the package is missing, the installed
    version is not the one asked for or not one the adapter supports, or it does not import.
    """
    from packaging.specifiers import InvalidSpecifier, SpecifierSet
    from packaging.utils import canonicalize_name

    match = _REQUIREMENT.match(text)
    if match is None or canonicalize_name(match.group(1)) != canonicalize_name(package):
        raise ImportSourceError(
            kind, text, f"the {kind} kind imports from the package `{package}`",
            hint=f"give `{package}` or `{package}==VERSION` as the source",
        )
    try:
        asked = SpecifierSet(match.group(2))
    except InvalidSpecifier:
        raise ImportSourceError(kind, text, f"`{match.group(2)}` is not a version specifier", hint=f"e.g. `{package}==1.0`") from None
    pinned = f"'{package}{supported}'"  # the version the adapter is written for, quoted for the shell
    try:
        version = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        raise ImportSourceError(
            kind, text, f"`{package}` is not installed",
            hint=f"pip install {pinned} (or envhub's extra: pip install 'envhub[import]')",
        ) from None
    if not asked.contains(version, prereleases=True):
        raise ImportSourceError(
            kind, text, f"{package} {version} is installed, not {match.group(2)}",
            hint=f"install the version asked for (pip install '{package}{match.group(2)}'), or give `{package}` to import the installed one",
        )
    if not SpecifierSet(supported).contains(version, prereleases=True):
        raise ImportSourceError(
            kind, text, f"{package} {version} is installed; this importer is written for {package}{supported}",
            hint=f"pip install {pinned}",
        )
    try:
        imported = importlib.import_module(module)
    except Exception as exc:  # the source's own import failing, whatever it raised
        raise ImportSourceError(
            kind, text, f"`import {module}` fails: {type(exc).__name__}: {exc}",
            hint=f"reinstall it (pip install --force-reinstall {pinned}) and check that `python -c 'import {module}'` works",
        ) from exc
    return Source(kind=kind, text=text, package=package, version=version, module=imported)


def comma_list(value: str) -> list[str]:
    """``a,b, c`` as ``["a", "b", "c"]``."""
    items = [part.strip() for part in value.split(",") if part.strip()]
    if not items:
        raise ValueError("give at least one name")
    return items


def slug(text: str) -> str:
    """``text`` as an environment name: lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def options_from_args(kind: str, options: tuple[Option, ...], args: list[str]) -> dict[str, Any]:
    """A kind's options from command-line words: ``--name VALUE``, ``--name=VALUE``, a bare ``--flag``."""
    flags = {o.key for o in options if o.flag}
    repeats = {o.key for o in options if o.repeat}
    given: dict[str, Any] = {}
    words = list(args)
    while words:
        word = words.pop(0)
        if not word.startswith("--") or word == "--":
            raise ImportSourceError(kind, kind, f"unexpected argument `{word}`", hint="kind options are written --name VALUE")
        key, eq, value = word[2:].partition("=")
        key = key.replace("-", "_")
        if key in flags:
            given[key] = True
            continue
        if not eq:
            if not words or words[0].startswith("--"):
                raise ImportSourceError(kind, kind, f"`--{key.replace('_', '-')}` needs a value")
            value = words.pop(0)
        if key in repeats:
            given.setdefault(key, []).append(value)
        else:
            given[key] = value
    return given
