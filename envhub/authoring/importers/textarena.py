"""``envhub import textarena``: one TextArena game as a multi-turn environment.

    envhub import textarena textarena==0.7.4 --game TicTacToe-v0 --opponent random -o tictactoe

The environment is :class:`~envhub.authoring.importers.textarena_runtime.TextArenaEnv`. Before it
writes anything, the import plays the game in a child process with the network shut off: a game
that cannot be made offline (``nltk.download`` at import, an OpenRouter judge, a module that does
not import on this Python), whose seat count is wrong, or whose moves a scripted opponent cannot
find, is refused with the reason.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from typing import Any

from envhub.authoring.importers.common import Generated, Option, Source, slug
from envhub.authoring.importers.textarena_runtime import OPPONENTS
from envhub.errors import ImportSourceError

PACKAGE = "textarena"
MODULE = "textarena"
SUPPORTED = "==0.7.4"
SUMMARY = "a TextArena game (--game TicTacToe-v0), the model in one seat against scripted or model opponents"
PROBE_EPISODES = 3
PROBE_TIMEOUT_S = 300

OPTIONS = (
    Option("game", "the TextArena game id, e.g. TicTacToe-v0", required=True),
    Option("opponent", "who plays the other seats: greedy (wins at once, else blocks an immediate loss), random or "
           "first-legal (among the moves the game lists), or model", default="greedy", choices=OPPONENTS),  # fmt: skip
    Option("player", "the model's seat", parse=int, default=0),
    Option("players", "seats in the game (default: the fewest the game accepts)", parse=int),
    Option("max-turns", "the model's turns before an episode is cut off (unscored)", parse=int, default=50),
    Option("opponent-model", "a model opponent's model name at its endpoint"),
    Option("opponent-base-url", "a model opponent's OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1"),
    Option("opponent-temperature", "a model opponent's sampling temperature", parse=float, default=0.7),
)


def build(source: Source, options: dict[str, Any]) -> Generated:
    game = options["game"]
    if options["opponent"] == "model" and not (options["opponent_model"] and options["opponent_base_url"]):
        raise ImportSourceError("textarena", game, "--opponent model needs --opponent-model and --opponent-base-url")
    found = probe(game, players=options["players"], player=options["player"], opponent=options["opponent"])
    if "error" in found:
        raise ImportSourceError("textarena", game, found["error"], hint=found.get("hint"))
    players = found["players"]
    settings: dict[str, Any] = {"game": game, "players": players, "player": options["player"], "opponent": options["opponent"]}
    if options["opponent"] == "model":
        settings.update(opponent_model=options["opponent_model"], opponent_base_url=options["opponent_base_url"],
                        opponent_temperature=options["opponent_temperature"])  # fmt: skip
    settings["package_version"] = source.version
    return Generated(
        name=f"textarena-{slug(game)}",
        description=f"TextArena {source.version} game {game}: the model plays seat {options['player']} of {players}"
        + ("" if players == 1 else f" against a {options['opponent']} opponent") + ", scored by the game's own reward.",
        class_name="TextArenaEnv",
        runtime_module="envhub.authoring.importers.textarena_runtime",
        settings=settings,
        max_turns=options["max_turns"],
        rubric_summary="game_reward: the game's own reward for the model's seat, in [0, 1]"
        + (" (the one-player reward, -1 as 0)" if players == 1 else " ((reward + 1) / 2: win 1, draw 0.5, loss 0)"),
        tags=["textarena", "imported", "multi-turn", "game", f"{players}-player"],
        step_timeout_s=120.0 if options["opponent"] == "model" else 30.0,
        readme=_readme(source, game, settings, options, found),
        tests=_TESTS,
    )


def probe(game: str, *, players: int | None, player: int, opponent: str) -> dict[str, Any]:
    """Play ``game`` in a child process with no network; what it found, or ``{"error": ...}``."""
    args = [sys.executable, "-m", __name__, json.dumps({"game": game, "players": players, "player": player, "opponent": opponent})]
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"playing {PROBE_EPISODES} episodes of {game} took over {PROBE_TIMEOUT_S} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"error": f"the probe of {game} exited with {done.returncode}: {(done.stderr or done.stdout)[-600:]}"}
    return json.loads(lines[-1])


def _probe(game: str, players: int | None, player: int, opponent: str) -> dict[str, Any]:
    """In the child: shut the network off, find the seat count, play a few episodes."""
    import socket

    def offline(*args: Any, **kwargs: Any) -> Any:
        raise OSError("no network: envhub environments run offline")

    socket.socket.connect = offline  # type: ignore[method-assign]
    socket.socket.connect_ex = offline  # type: ignore[method-assign]
    socket.create_connection = offline  # type: ignore[assignment]

    from envhub.authoring.importers import textarena_runtime as runtime
    from envhub.errors import EnvhubError

    try:
        runtime.make_game(game)
    except EnvhubError as exc:
        return {"error": str(exc).split(": option `game`: ", 1)[-1]}
    tried: dict[int, str] = {}
    for n in [players] if players else range(1, 9):
        try:
            with runtime.game_random({"random": random.Random(0).getstate()}):
                runtime.make_game(game).reset(num_players=n, seed=0)
        except Exception as exc:  # the game refuses this seat count
            tried[n] = f"{type(exc).__name__}: {exc}"
            continue
        players = n
        break
    else:
        shown = "; ".join(f"{n} players: {why[:120]}" for n, why in tried.items())
        return {"error": f"{game} does not start offline with {'that many' if players else 'any number of'} players ({shown})"}
    # A model opponent is not asked here (no network): its seats are played first-legal to try the game.
    scripted = "first-legal" if opponent == "model" else opponent
    try:
        env = runtime.TextArenaEnv(game=game, players=players, player=player, opponent=scripted)
    except EnvhubError as exc:
        return {"error": str(exc)}
    longest, rewards = 0, []
    for seed in range(PROBE_EPISODES):
        try:
            obs, _ = env.reset(seed=seed)
            for turn in range(1, env.max_turns + 1):
                moves = runtime.listed_moves(obs[-1]["content"])
                obs, _, terminated, truncated, info = env.step(moves[0] if moves else "[0]")
                if terminated or truncated:
                    break
        except EnvhubError as exc:
            hint = "use --opponent model with a model endpoint, or another game" if "listed no legal moves" in str(exc) else None
            return {"error": str(exc), "hint": hint}
        longest = max(longest, turn)
        if terminated:
            rewards.append(info["game"]["reward"])
    return {"players": players, "longest": longest, "rewards": rewards}


def _readme(source: Source, game: str, settings: dict, options: dict, found: dict) -> str:
    players, seat = settings["players"], settings["player"]
    if players == 1:
        opponents = "A one-player game: no opponent."
    elif settings["opponent"] == "model":
        opponents = (f"The other seats are played by the model `{settings['opponent_model']}` at {settings['opponent_base_url']}"
                     f" (temperature {settings['opponent_temperature']}; its API key is read from ENVHUB_OPPONENT_API_KEY). "
                     "Its moves come over the network: episodes replay only as far as the endpoint is deterministic, "
                     "and the docker runtime, whose container has no network, cannot reach it.")  # fmt: skip
    else:
        how = {"greedy": "one that wins at once, else one after which the model cannot win at once, else any (ties at random)",
               "random": "a uniformly random one", "first-legal": "the first one"}[settings["opponent"]]
        opponents = f"The other seats are played by a scripted `{settings['opponent']}` opponent: of the moves the game lists for its seat, {how}."
    scoring = ("the reward itself (TextArena's completion fraction), a game lost by illegal moves (-1) as 0" if players == 1
               else "`(reward + 1) / 2`: a win 1, a draw 0.5, a loss 0")  # fmt: skip
    return "\n".join([
        f"TextArena's `{game}`, the model in seat {seat} of {players}. {opponents}",
        "",
        "## Episodes",
        "",
        "The system message is the game's own prompt for the model's seat; each user turn is what the game",
        "showed that seat since its last move, written as TextArena's LLM wrapper writes it (`[GAME] ...`,",
        "`[Player 1] ...`). Each assistant message is a move, read by the game through its registered action",
        "wrappers; an illegal move is handled as the game handles it (a second try, then the game is lost).",
        f"An episode ends with the game, or is cut off after {options['max_turns']} of the model's turns.",
        "",
        "Tasks are seeds (`seed-N`): even seeds are `train`, odd seeds `test`. The game draws from Python's",
        "global `random`, so each episode runs the game on its own saved stream: same seed, same moves, same game.",
        "",
        "## Scoring",
        "",
        f"- `game_reward` (1.0): the game's own reward for the model's seat, in [0, 1]: {scoring}.",
        "- A game cut off at the turn limit has no reward: the criterion is reported unscored, not guessed.",
        "- A game that raises ends its episode with an EnvironmentFailure naming the error: no reward.",
        "",
        f"The import played {PROBE_EPISODES} episodes offline (longest: {found['longest']} turns of the model).",
    ])


_TESTS = '''

def test_a_game_played_through_ends_with_the_games_reward():
    from envhub.authoring.importers.textarena_runtime import listed_moves

    env = envhub.make(FOLDER)
    obs, _ = env.reset(seed=0)
    for _ in range(env.max_turns):
        moves = listed_moves(obs[-1]["content"]) or ["[0]"]
        obs, reward, terminated, truncated, info = env.step(moves[0])
        if terminated or truncated:
            break
    assert terminated, "the game ended"
    assert 0.0 <= reward <= 1.0 and info["rubric"]["criteria"]["game_reward"]["score"] == reward
'''


if __name__ == "__main__":
    print(json.dumps(_probe(**json.loads(sys.argv[1]))))
