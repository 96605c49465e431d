"""A pack of imported environments, as an author would sell it (the README's "A pack to sell"): a
dozen reasoning-gym task families and two TextArena games imported offline, published on the local
registry, bundled in a licensed pack and signed; then sold on a hub (published there, granted to a
lab) and pulled by the lab, whose pull verifies the signature and each version's digest. The same
commands as the README, through the CLI. Bounded: imports, publishes and one reset each, no training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import envhub
from envhub.cli import build_app
from envhub.registry import LocalRegistry
from envhub.registry.packs import verify_pack

pytest.importorskip("reasoning_gym", reason="the `import` extra (pip install 'envhub[import]') is not installed")
pytest.importorskip("textarena", reason="the `import` extra (pip install 'envhub[import]') is not installed")

FAMILIES = ["basic_arithmetic", "chain_sum", "gcd", "lcm", "prime_factorization", "fraction_simplification", "simple_equations",
            "count_bits", "base_conversion", "letter_counting", "word_sorting", "caesar_cipher"]  # fmt: skip
GAMES = {"ta-tictactoe": "TicTacToe-v0", "ta-nim": "Nim-v0"}
PACK = "acme/reasoning-and-games@1.0.0"
LICENSE = "Licensed to the buyer for training and evaluating models; no redistribution of the environments.\n"


@pytest.fixture
def hub(hub):
    """tests/conftest.py's hub, with the seller (acme) and the buyer (lab) as users."""
    for user in ("acme", "lab"):
        hub.tokens[user] = hub.hub.create_user(user)[1]
    return hub


def envhub_cli(*args: str) -> str:
    result = CliRunner().invoke(build_app(), list(args))
    assert result.exit_code == 0, f"envhub {' '.join(args)}:\n{result.output}"
    return result.output


def names() -> list[str]:
    return [f"rg-{f.replace('_', '-')}" for f in FAMILIES] + list(GAMES)


def test_a_signed_licensed_pack_of_imported_environments(home, hub, tmp_path, monkeypatch):  # home: the author's
    # import: one environment per reasoning-gym family, one per game, each pinned to its source
    for family in FAMILIES:
        name = f"rg-{family.replace('_', '-')}"
        envhub_cli("import", "reasoning-gym", "reasoning-gym==0.1.25", "--tasks", family, "--name", f"acme/{name}", "-o", f"envs/{name}")
    for name, game in GAMES.items():
        envhub_cli("import", "textarena", "textarena==0.7.4", "--game", game, "--name", f"acme/{name}", "-o", f"envs/{name}")
    # publish on the local registry
    for name in names():
        assert "published acme/" in envhub_cli("publish", f"envs/{name}")
    local = LocalRegistry().index().environments
    assert sorted(local) == sorted(f"acme/{n}" for n in names())

    # the pack: licensed, resolved to exact versions and digests, signed
    Path("LICENSE").write_text(LICENSE)
    envhub_cli("pack-keys")
    envs = [arg for name in names() for arg in ("-e", f"acme/{name}@0.1.0")]
    envhub_cli("pack", "create", PACK, *envs, "--license-file", "LICENSE",
               "--description", "12 reasoning-gym task families and 2 TextArena games", "-o", "pack.json")  # fmt: skip
    assert "signed pack.json" in envhub_cli("sign", "pack.json")
    pack = json.loads(Path("pack.json").read_text())
    assert pack["license"] == LICENSE and pack["namespace"] == "acme" and pack["version"] == "1.0.0"
    assert {e["ref"]: e["digest"] for e in pack["environments"]} == {
        f"{full}@0.1.0": entry.versions["0.1.0"].digest for full, entry in local.items()
    }
    verify_pack(pack, pack["public_key"])  # the signature covers every ref, digest and the license

    # sold on a hub: the environments private, the pack granted to a lab
    envhub_cli("login", hub.url, "--token", hub.tokens["acme"])
    for name in names():
        envhub_cli("publish", f"envs/{name}", "--registry", hub.url, "--private")
    assert "(signed)" in envhub_cli("pack", "publish", "pack.json", "--registry", hub.url)
    envhub_cli("pack", "grant", "acme/reasoning-and-games", "lab", "--registry", hub.url)

    # the lab, on its own machine, verifies the signature with the author's public key and pulls
    monkeypatch.setenv("ENVHUB_HOME", str(tmp_path / "lab-home"))
    envhub_cli("login", hub.url, "--token", hub.tokens["lab"])
    pulled = envhub_cli("pack", "pull", PACK, "--registry", hub.url, "--public-key", pack["public_key"])
    assert "signature of acme/reasoning-and-games@1.0.0 verified" in pulled and pulled.count("pulled acme/") == len(names())
    lab = LocalRegistry().index().environments
    assert {f: e.versions["0.1.0"].digest for f, e in lab.items()} == {f: e.versions["0.1.0"].digest for f, e in local.items()}
    envhub_cli("trust", "acme")  # the lab runs the seller's code in process only once it trusts it
    for name in names():
        obs, _ = envhub.make(f"acme/{name}@0.1.0").reset(seed=0)
        assert obs[-1]["role"] == "user" and obs[-1]["content"]
