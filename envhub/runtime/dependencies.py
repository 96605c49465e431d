"""An environment's ``dependencies`` checked where it loads (in-process, the process runtime, validate).

Without the check a missing requirement fails as the module's ``No module named ...`` with a hint to
look at the entrypoint; with it, the error names each unmet requirement, what is installed instead,
and the pip command that installs them. Version specifiers are checked with ``packaging`` where it
is installed (it is not one of envhub's own dependencies); without it only presence is checked,
which is what a docker image needs (it installs exactly the manifest's requirements).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import subprocess
from collections.abc import Callable, Sequence

from envhub.errors import MissingDependencyError
from envhub.identity.manifest import Manifest

_NAME = re.compile(r"^\s*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)")


def unmet(requirements: Sequence[str], *, python: str | None = None) -> list[tuple[str, str | None]]:
    """(requirement, the version installed or None) for each requirement not satisfied here, or in
    the interpreter ``python`` (a virtual environment of the environment's own) when given."""
    installed_version = _versions_in(python, requirements) if python else _version_here
    try:
        from packaging.requirements import InvalidRequirement, Requirement
    except ImportError:  # pragma: no cover - packaging is almost always there; then presence only
        Requirement = None  # type: ignore[assignment,misc]
    problems = []
    for text in requirements:
        match = _NAME.match(text)
        if match is None:
            continue  # the manifest refuses requirements that are not plain names and specifiers
        installed = installed_version(match.group(1))
        if installed is None:
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


def _version_here(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


_VERSIONS = """import importlib.metadata as m, json, sys
def v(n):
    try: return m.version(n)
    except m.PackageNotFoundError: return None
print(json.dumps({n: v(n) for n in sys.argv[1:]}))"""


def _versions_in(python: str, requirements: Sequence[str]) -> Callable[[str], str | None]:
    """The installed-version lookup of another interpreter, asked once for every requirement."""
    names = [m.group(1) for text in requirements if (m := _NAME.match(text))]
    done = subprocess.run([python, "-c", _VERSIONS, *names], capture_output=True, text=True, timeout=60)
    found = json.loads(done.stdout) if done.returncode == 0 else {}
    return lambda name: found.get(name)


def check_dependencies(manifest: Manifest) -> None:
    """MissingDependencyError naming every unmet requirement of ``manifest`` and how to install them.

    With ``[runtime] python`` they are checked in that interpreter; where it does not exist (an image
    that installed the dependencies into its own Python), here.
    """
    python = manifest.runtime.python
    python = python if python and os.access(python, os.X_OK) else None
    problems = unmet(manifest.dependencies, python=python)
    if problems:
        named = [f"`{req}` ({'not installed' if have is None else f'{have} is installed'})" for req, have in problems]
        pip = f"{shlex.quote(python)} -m pip" if python else "pip"
        install = f"{pip} install " + " ".join(shlex.quote(req) for req, _ in problems)
        raise MissingDependencyError(manifest.ref, named, install=install)
