"""``envhub build`` on the host: no code an environment supplies runs outside a container.

The host only downloads binary wheels; a source distribution (whose build backend is the author's
code) is refused, and a wheel that pip did not download into the wheelhouse is never installed.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

import envhub
from envhub.errors import ImageBuildError
from envhub.runtime.images import gather_wheels

ROOT = Path(__file__).resolve().parents[2]
ECHO = ROOT / "tests" / "fixtures" / "echo"
EVIL = "envhub-test-evil"


def write_evil_sdist(index: Path, marker: Path) -> Path:
    """A real source distribution whose in-tree build backend writes ``marker`` when pip imports it."""
    index.mkdir(parents=True, exist_ok=True)
    root = "envhub_test_evil-1.0"
    files = {
        "pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n',
        "backend.py": textwrap.dedent(
            f"""\
            import os
            from pathlib import Path
            Path({str(marker)!r}).write_text("ran as uid %d" % os.getuid())
            def get_requires_for_build_wheel(config_settings=None):
                return []
            def prepare_metadata_for_build_wheel(directory, config_settings=None):
                raise RuntimeError("built on the host")
            def build_wheel(directory, config_settings=None, metadata_directory=None):
                raise RuntimeError("built on the host")
            """
        ),
        "PKG-INFO": "Metadata-Version: 2.1\nName: envhub-test-evil\nVersion: 1.0\n",
    }
    path = index / f"{root}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{root}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal valid pure-Python wheel of ``name``."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = name.replace("-", "_")
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    info = f"{dist}-{version}.dist-info"
    members = {
        f"{dist}/__init__.py": "PLANTED = True\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: envhub-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    with zipfile.ZipFile(path, "w") as whl:
        for member, text in members.items():
            whl.writestr(member, text)
        whl.writestr(f"{info}/RECORD", "".join(f"{m},,\n" for m in members) + f"{info}/RECORD,,\n")
    return path


@pytest.fixture
def evil_index(tmp_path, monkeypatch):
    """An index (pip's find-links) that serves the evil sdist, a fresh wheelhouse, and the marker path."""
    marker = tmp_path / "MARKER"
    index = tmp_path / "index"
    write_evil_sdist(index, marker)
    links = " ".join(filter(None, [os.environ.get("PIP_FIND_LINKS", ""), str(index)]))
    monkeypatch.setenv("PIP_FIND_LINKS", links)
    monkeypatch.setenv("ENVHUB_WHEELHOUSE", str(tmp_path / "wheelhouse"))
    return marker


def test_gathering_wheels_never_runs_an_sdists_build_backend(evil_index, tmp_path):
    with pytest.raises(ImageBuildError, match=EVIL):
        gather_wheels([EVIL], tmp_path / "context" / "wheels", log=lambda line: None)
    assert not evil_index.exists(), f"the sdist's build backend ran on the host: {evil_index.read_text()}"


def test_a_wheel_pip_did_not_download_is_never_installed(tmp_path, monkeypatch):
    house = tmp_path / "wheelhouse"
    monkeypatch.setenv("ENVHUB_WHEELHOUSE", str(house))
    planted = write_wheel(house, "envhub-test-planted", "1.0")  # written by something other than pip
    with pytest.raises(ImageBuildError, match=planted.name):
        gather_wheels(["envhub-test-planted"], tmp_path / "context" / "wheels", log=lambda line: None)
    assert not (tmp_path / "context" / "wheels" / planted.name).exists()


def test_each_build_gets_only_its_own_closure(tmp_path, monkeypatch):
    house = tmp_path / "wheelhouse"
    monkeypatch.setenv("ENVHUB_WHEELHOUSE", str(house))
    index = tmp_path / "index"
    write_wheel(index, "envhub-test-a", "1.0")
    write_wheel(index, "envhub-test-b", "1.0")
    links = " ".join(filter(None, [os.environ.get("PIP_FIND_LINKS", ""), str(index)]))
    monkeypatch.setenv("PIP_FIND_LINKS", links)
    gather_wheels(["envhub-test-a"], tmp_path / "one", log=lambda line: None)
    gather_wheels(["envhub-test-b"], tmp_path / "two", log=lambda line: None)
    assert sorted(p.name for p in (tmp_path / "two").glob("*.whl")) == ["envhub_test_b-1.0-py3-none-any.whl"]
    # Reused from the wheelhouse on a second build, offline, and still checked.
    shutil.rmtree(index)
    gather_wheels(["envhub-test-a"], tmp_path / "three", log=lambda line: None)
    assert [p.name for p in (tmp_path / "three").glob("*.whl")] == ["envhub_test_a-1.0-py3-none-any.whl"]


@pytest.mark.docker
def test_make_docker_with_an_sdist_dependency_runs_nothing_on_the_host(docker_engine, evil_index, tmp_path):
    folder = tmp_path / "env"
    shutil.copytree(ECHO, folder, ignore=shutil.ignore_patterns("__pycache__"))
    toml = (folder / "envhub.toml").read_text().replace('max_turns = 10000', f'max_turns = 10000\ndependencies = ["{EVIL}"]')
    (folder / "envhub.toml").write_text(toml)
    with pytest.raises(ImageBuildError, match=EVIL):
        envhub.make(folder, runtime="docker")
    assert not evil_index.exists(), f"the sdist's build backend ran on the host: {evil_index.read_text()}"
