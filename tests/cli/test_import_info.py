"""`envhub info` on an imported environment: its dependencies (the pinned source) and the image
recorded for it in the local registry, as JSON and in the table."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from envhub.cli import build_app

pytest.importorskip("reasoning_gym", reason="the `import` extra is not installed")


def test_info_shows_dependencies_and_the_recorded_image(home, tmp_path):
    from envhub.authoring.importers import import_environment
    from envhub.identity.artifact import pack_bytes, sha256_digest
    from envhub.runtime.images import BuiltImage, image_tag, record_image

    folder = tmp_path / "rg"
    result = import_environment("reasoning-gym", "reasoning-gym==0.1.25", output=folder, name="acme/counting",
                                options={"tasks": "letter_counting", "test_size": "5"})  # fmt: skip
    runner = CliRunner()
    published = runner.invoke(build_app(), ["publish", str(folder)])
    assert published.exit_code == 0, published.output
    data = json.loads(runner.invoke(build_app(), ["info", "acme/counting", "--json"]).output)
    (version,) = data["versions"]
    assert version["dependencies"] == ["reasoning-gym==0.1.25"] and version["image"] is None
    digest = sha256_digest(pack_bytes(folder))
    tag = image_tag(result.manifest, digest)
    assert record_image(result.manifest, BuiltImage(tag, "sha256:" + "ab" * 32, digest, reused=False), home=home)
    data = json.loads(runner.invoke(build_app(), ["info", "acme/counting", "--json"]).output)
    assert data["versions"][0]["image"] == tag and data["versions"][0]["image_digest"] == "sha256:" + "ab" * 32
    table = runner.invoke(build_app(), ["info", "acme/counting"], env={"COLUMNS": "300"}).output
    assert "reasoning-gym==0.1.25" in table and tag in table
