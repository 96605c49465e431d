"""An environment's ``dependencies`` checked where it loads (in-process, the process runtime, validate).

Without the check a missing requirement fails as the module's ``No module named ...`` with a hint to
look at the entrypoint; with it, the error names each unmet requirement, what is installed instead,
and the pip command that installs them. Version specifiers are checked with ``packaging`` where it
is installed (it is not one of envhub's own dependencies); without it only presence is checked,
which is what a docker image needs (it installs exactly the manifest's requirements).
"""

from __future__ import annotations

import importlib.metadata
import re
import shlex
from collections.abc import Sequence

from envhub.errors import MissingDependencyError
from envhub.identity.manifest import Manifest

_NAME = re.compile(r"^\s*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)")


def unmet(requirements: Sequence[str]) -> list[tuple[str, str | None]]:
    """(requirement, the version installed or None) for each requirement not satisfied here."""
    try:
        from packaging.requirements import InvalidRequirement, Requirement
    except ImportError:  # pragma: no cover - packaging is almost always there; then presence only
        Requirement = None  # type: ignore[assignment,misc]
    problems = []
    for text in requirements:
        match = _NAME.match(text)
        if match is None:
            continue  # the manifest refuses requirements that are not plain names and specifiers
        try:
            installed = importlib.metadata.version(match.group(1))
        except importlib.metadata.PackageNotFoundError:
            problems.append((text.strip(), None))
            continue
        if Requirement is None:
            continue
        try:
            specifier = Requirement(text).specifier
        except InvalidRequirement:
            continue
        if not specifier.contains(installed, prereleases=True):
            problems.append((text.strip(), installed))
    return problems


def check_dependencies(manifest: Manifest) -> None:
    """MissingDependencyError naming every unmet requirement of ``manifest`` and how to install them."""
    problems = unmet(manifest.dependencies)
    if problems:
        named = [f"`{req}` ({'not installed' if have is None else f'{have} is installed'})" for req, have in problems]
        install = "pip install " + " ".join(shlex.quote(req) for req, _ in problems)
        raise MissingDependencyError(manifest.ref, named, install=install)
