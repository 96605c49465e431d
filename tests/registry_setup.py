"""What a registry test starts from: an ENVHUB_HOME of its own, and environment folders to publish."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

ARITHMETIC = Path(__file__).resolve().parents[1] / "environments" / "arithmetic"


def make_env_folder(parent: Path, *, name: str = "adder", version: str = "1.0.0", namespace: str = "acme", extra: str = "") -> Path:
    """A copy of the arithmetic environment under another identity; ``extra`` changes its content."""
    suffix = "-" + hashlib.sha256(extra.encode()).hexdigest()[:8] if extra else ""
    folder = parent / f"{namespace}-{name}-{version}{suffix}"
    if folder.is_dir():
        return folder
    shutil.copytree(ARITHMETIC, folder, ignore=shutil.ignore_patterns("__pycache__", "tests"))
    toml = (folder / "envhub.toml").read_text()
    toml = re.sub(r'^namespace = ".*"$', f'namespace = "{namespace}"', toml, flags=re.M)
    toml = re.sub(r'^name = ".*"$', f'name = "{name}"', toml, flags=re.M)
    toml = re.sub(r'^version = ".*"$', f'version = "{version}"', toml, flags=re.M)
    (folder / "envhub.toml").write_text(toml)
    if extra:
        (folder / "EXTRA.txt").write_text(extra)
    return folder


def isolate(tmp_path: Path, monkeypatch) -> Path:
    """ENVHUB_HOME in a temporary folder, run from ``tmp_path``; no registry, token, lockfile or
    public key leaks in from outside."""
    path = tmp_path / "home"
    monkeypatch.setenv("ENVHUB_HOME", str(path))
    for var in ("ENVHUB_REGISTRY", "ENVHUB_TOKEN", "ENVHUB_LOCKFILE", "ENVHUB_PACK_PUBLIC_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return path
