"""`envhub import textarena`, against the real textarena package (the `import` extra's pin): the
folder validates, passes the audit and plays alike in every runtime; the game's own reward scores
it; illegal moves are the game's to handle; opponents (greedy, random, first-legal, a model on an
endpoint) play the other seats; the global `random` is left alone; games that need the network,
do not import, or raise are refused or reported, never given a reward."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
from gymnasium.utils.env_checker import check_env

import envhub
from envhub.authoring import validate
from envhub.authoring.importers import import_environment
from envhub.authoring.importers.textarena_runtime import TextArenaEnv, listed_moves
from envhub.errors import EnvironmentFailure, ImportSourceError, InvalidOptionError

from imported_checks import assert_its_own_tests_pass, assert_the_readme_says, assert_validates_and_passes_the_audit

pytest.importorskip("textarena", reason="the `import` extra (pip install 'envhub[import]') is not installed")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("import") / "ttt"
    import_environment("textarena", "textarena==0.7.4", output=out, options={"game": "TicTacToe-v0", "max_turns": "12"})
    return out


def first_listed(obs) -> str:
    return (listed_moves(obs[-1]["content"]) or ["[0]"])[0]


def play(env, policy, *, seed=0, split="train"):
    obs, _ = env.reset(seed=seed, options={"split": split})
    while True:
        obs, reward, terminated, truncated, info = env.step(policy(obs))
        if terminated or truncated:
            return obs, reward, terminated, truncated, info


def test_the_folder_pins_the_source_and_says_what_it_is(folder):
    manifest = envhub.load_manifest(folder)
    assert manifest.ref == "local/textarena-tictactoe-v0@0.1.0" and manifest.dependencies == ["textarena==0.7.4"]
    assert manifest.max_turns == 12 and manifest.license == "MIT" and "2-player" in manifest.tags
    module = (folder / "textarena_tictactoe_v0_env.py").read_text()
    assert "from envhub.authoring.importers.textarena_runtime import TextArenaEnv" in module and len(module.splitlines()) < 40
    assert_the_readme_says(folder, "TextArena's `TicTacToe-v0`", "greedy", "(reward + 1) / 2", "envhub import textarena textarena==0.7.4")


def test_validate_audit_and_the_folders_own_tests(folder):
    assert_validates_and_passes_the_audit(folder, tasks=6)
    assert_its_own_tests_pass(folder)


def test_the_games_own_reward_and_its_handling_of_illegal_moves(folder):
    env = envhub.make(folder)
    obs, _ = env.reset(seed=1)
    system_prompt, first = obs[0]["content"], obs[-1]["content"]
    assert "You are Player 0 in Tic Tac Toe" in system_prompt and "greedy opponent" in system_prompt
    assert first.startswith("[GAME] Current Board") and "Available Moves: '[0]'" in first
    obs, reward, terminated, *_ = env.step("I would rather not")
    assert not terminated and "attempted an invalid move" in obs[-1]["content"]  # the game gives a second try
    obs, reward, terminated, truncated, info = env.step("still no")
    assert terminated and not truncated and reward == 0.0  # the second invalid move loses the game
    assert info["game"]["reward"] == -1.0 and info["game"]["invalid_move"] is True
    assert info["rubric"]["criteria"]["game_reward"] == {"score": 0.0, "weight": 1.0, "reason": info["rubric"]["criteria"]["game_reward"]["reason"]}
    assert "reward -1" in info["rubric"]["criteria"]["game_reward"]["reason"]
    # a full game ends with the game's own outcome: win 1, draw 0.5, loss 0
    outcomes = {play(env, first_listed, seed=s)[1] for s in range(6)}
    assert outcomes <= {0.0, 0.5, 1.0} and outcomes


def test_a_game_cut_off_at_max_turns_is_unscored_not_guessed(folder):
    env = envhub.make(folder, max_turns=1)
    obs, reward, terminated, truncated, info = play(env, first_listed)
    assert truncated and not terminated and reward == 0.0
    assert info["rubric"]["unscored"] == ["game_reward"]
    assert info["rubric"]["criteria"]["game_reward"]["score"] is None
    assert "did not end within 1 turns" in info["rubric"]["criteria"]["game_reward"]["reason"]


def test_episodes_replay_and_leave_the_global_random_alone(folder):
    env = envhub.make(folder, opponent="random")
    random.seed(1234)
    expected = [random.random() for _ in range(3)]
    random.seed(1234)
    first = play(env, first_listed, seed=5)
    interleaved = envhub.make(folder, opponent="random")
    interleaved.reset(seed=9)
    interleaved.step("[4]")  # another game's draws in between must not change this one's
    again = play(env, first_listed, seed=5)
    assert [random.random() for _ in range(3)] == expected
    assert repr(first) == repr(again)
    games = {repr(play(env, first_listed, seed=s)[0]) for s in range(6)}
    assert len(games) > 1  # the random opponent's moves follow the seed


def test_one_episode_per_runtime_equals_inprocess(folder):
    local = envhub.make(folder)
    remote = envhub.make(folder, runtime="process")
    _same_episodes(local, remote)
    check_env(remote, skip_render_check=True)
    remote.close()


@pytest.mark.docker
def test_the_docker_runtime_plays_it_alike(folder, docker_engine):
    local = envhub.make(folder)
    remote = envhub.make(folder, runtime="docker")
    _same_episodes(local, remote)
    remote.close()


def _same_episodes(local, remote):
    for seed in range(3):
        assert remote.reset(seed=seed) == local.reset(seed=seed)
        moves = ["[4]", "nonsense", "[0]", "[8]", "[2]", "[6]", "[1]", "[3]", "[5]", "[7]"]
        for move in moves:
            step = remote.step(move)
            assert step == local.step(move)
            if step[2] or step[3]:
                break
        assert step[2] and "rubric" in step[4]


def test_the_scripted_opponents(folder):
    # a model that always takes the first listed cell beats the random opponent far more often than the greedy one,
    # which takes a winning cell when it has one and blocks the model's
    means = {}
    for opponent in ("greedy", "random", "first-legal"):
        env = envhub.make(folder, opponent=opponent)
        means[opponent] = sum(play(env, first_listed, seed=s)[1] for s in range(6)) / 6
    assert means["greedy"] <= 0.25 < means["random"], means
    first_legal = envhub.make(folder, opponent="first-legal")
    assert len({repr(play(first_legal, first_listed, seed=s)[0][1:]) for s in range(3)}) == 1  # no chance in it
    with pytest.raises(InvalidOptionError, match="opponent_model and opponent_base_url"):
        envhub.make(folder, opponent="model")


def test_a_model_opponent_on_an_openai_compatible_endpoint(tmp_path):
    from envhub.evaluation.model_server.scripted import ScriptedEndpoint, serve_in_thread

    def move(messages):
        listed = listed_moves(messages[-1]["content"])
        return f"I take {listed[-1]}" if listed else "[0]"

    server = ScriptedEndpoint(move, model="opponent-7b")
    with serve_in_thread(server.app) as url:
        out = tmp_path / "vs-model"
        import_environment("textarena", "textarena", output=out, options={
            "game": "TicTacToe-v0", "opponent": "model", "opponent_model": "opponent-7b", "opponent_base_url": url})  # fmt: skip
        assert envhub.load_manifest(out).limits.step_timeout_s == 120
        env = envhub.make(out)
        obs, reward, terminated, truncated, info = play(env, first_listed)
        assert terminated and server.requests
        body = server.requests[0]
        assert body["model"] == "opponent-7b" and body["messages"][0]["role"] == "system"
        assert "You are Player 1 in Tic Tac Toe" in body["messages"][0]["content"]
        assert "[Player 1] I take" in "\n".join(m["content"] for m in obs)


def test_a_one_player_game_scores_its_own_completion(tmp_path):
    out = tmp_path / "lake"
    import_environment("textarena", "textarena", output=out, options={"game": "FrozenLake-v0"})
    manifest = envhub.load_manifest(out)
    assert "1-player" in manifest.tags and "against" not in manifest.description
    env = envhub.make(out)
    obs, reward, terminated, truncated, info = play(env, first_listed)
    assert terminated and 0.0 <= reward <= 1.0
    assert reward == pytest.approx(max(info["game"]["reward"], 0.0))
    assert validate(out).ok


def test_games_that_cannot_work_offline_or_be_played_are_refused(tmp_path):
    def refused(game, **options):
        with pytest.raises(ImportSourceError) as caught:
            import_environment("textarena", "textarena", output=tmp_path / game, options={"game": game, **options})
        assert not (tmp_path / game).exists()
        return caught.value

    import nltk

    download = nltk.download
    for game in ("Wordle-v0", "Codenames-v0"):
        assert re.search(r"downloads nltk data .* run offline", str(refused(game))), game
    assert nltk.download is download  # the guard is put back
    with pytest.raises(InvalidOptionError, match="downloads nltk data"):
        TextArenaEnv(game="Hangman-v0", players=1)
    assert "cannot be made: SyntaxError" in str(refused("Chess-v0"))
    assert "Did you mean" in str(refused("TicTacTo-v0")) or "did you mean" in str(refused("TicTacTo-v0"))
    error = refused("ConnectFour-v0")
    assert "listed no legal moves" in str(error) and "--opponent model" in error.hint
    assert "does not start offline with that many players" in str(refused("TicTacToe-v0", players="3"))
    assert "needs --opponent-model" in str(refused("TicTacToe-v0", opponent="model"))
    with pytest.raises(ImportSourceError, match="choose one of greedy, random, first-legal, model"):
        import_environment("textarena", "textarena", output=tmp_path / "x", options={"game": "TicTacToe-v0", "opponent": "smart"})


def test_a_game_that_raises_ends_the_episode_with_an_error_and_no_reward():
    import textarena as ta
    from textarena.envs.registration import ENV_REGISTRY

    class CrashOnThree(ta.Env):
        """A real TextArena game (two players name numbers) whose step has a bug when 3 is played."""

        def reset(self, num_players, seed=None):
            self.state = ta.TwoPlayerState(num_players=num_players, seed=seed)
            self.state.reset(game_state={}, player_prompt_function=lambda player_id, game_state: "Name a number: [1], [2] or [3].")
            self.state.add_observation(message="Available moves: '[1]', '[2]', '[3]'", observation_type=ta.ObservationType.GAME_BOARD)

        def step(self, action):
            if "3" in action:
                raise ZeroDivisionError("the game's own bug")
            self.state.add_observation(message="Available moves: '[1]', '[2]', '[3]'", observation_type=ta.ObservationType.GAME_BOARD)
            return self.state.step()

    if "EnvhubCrashOnThree-v0" not in ENV_REGISTRY:
        ta.register("EnvhubCrashOnThree-v0", entry_point=CrashOnThree)
    env = TextArenaEnv(game="EnvhubCrashOnThree-v0", opponent="first-legal")
    env.reset(seed=0)
    env.step("[2]")
    with pytest.raises(EnvironmentFailure, match=r"raised ZeroDivisionError: the game's own bug on the model's move '\[3\]'; the episode has no reward"):
        env.step("[3]")
    assert "game" not in env.episode.state  # torn down
    with pytest.raises(envhub.errors.EpisodeEndedError):
        env.step("[1]")
