"""The environment behind every folder ``envhub import textarena`` writes: one TextArena game, the
model playing one seat, every other seat played by a scripted opponent or by a model.

- Episodes: the game is made and reset per episode (``setup_episode``, seeded by the task) and
  released when it ends (``teardown_episode``). The system message is the game's own prompt for the
  model's seat; each user turn is what the game showed that seat since its last move (the board,
  the opponents' moves, an invalid-move notice), as TextArena's LLM wrapper writes it
  (``[GAME] ...``, ``[Player 1] ...``). The model's message is its move, passed to the game through
  the game's registered action wrappers; an illegal move is the game's to handle (usually one more
  try, then the game is lost).
- Opponents, for games that list each seat's moves (``Available Moves: '[0]', '[4]'``): ``greedy``
  tries each listed move on a copy of the game and takes one that wins at once, else one after
  which the next seat cannot win at once, else any (ties broken at random); ``random`` takes any
  listed move; ``first-legal`` the first. ``model`` asks a model behind an OpenAI-compatible
  endpoint for each move, in any game.
- Rubric: ``game_reward`` is the game's own reward for the model's seat, in [0, 1]: for games of
  several players, ``(reward + 1) / 2`` (win 1, draw 0.5, loss 0); for one-player games, the reward
  itself (TextArena's completion fraction), with its -1 for a game lost by illegal moves as 0. A
  game cut off at ``max_turns`` has no reward: the criterion is unscored, never made up.
- Isolation: TextArena draws from the global ``random`` module (``State(seed)`` reseeds it). Every
  call into a game runs on the episode's own saved stream under a process-wide lock, and the
  caller's stream is put back, so games neither disturb the caller nor each other's replays.
- Offline: games that call ``nltk.download`` when imported (Wordle, Codenames, Hangman, ...) cannot
  work offline nor in the docker runtime's container, which has no network: making one raises an
  error that says so instead of trying the network.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import random
import re
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from envhub.authoring.importers.seeded import SeedTasks
from envhub.env.core import ChatEnv, Episode, Msg, Reply, Task, assistant, system, user
from envhub.env.rubric import Criterion, Rubric, Score
from envhub.errors import EnvironmentFailure, InvalidOptionError, Unscored
from envhub.http.transport import run_blocking

OPPONENTS = ("greedy", "random", "first-legal", "model")
#: A line of the game's text that lists the moves of the seat it is shown to.
_LISTING = re.compile(r"(?im)^[^\n]*\b(?:available|valid|legal|possible)\b[^\n]*\b(?:moves?|actions?)\b[^\n]*$")
_MOVE = re.compile(r"\[[^\[\]\n]+\]")
#: Opponent moves between two of the model's before the game is taken to be stuck.
_MAX_OPPONENT_MOVES = 10_000
#: Listed moves the greedy opponent tries (and replies it checks) at most, each on a copy of the game.
_GREEDY_WIDTH = 32
GAME_ID = -1  # TextArena's sender id of the game itself

_GAME_LOCK = threading.RLock()


class OfflineUnavailable(RuntimeError):
    """Raised in place of ``nltk.download``: the game needs data from the network."""


@contextlib.contextmanager
def game_random(state: dict[str, Any]) -> Iterator[None]:
    """Run TextArena code on the episode's own ``random`` stream (``state["random"]``).

    The caller's stream is saved and put back; the game's is kept in ``state`` for its next call.
    One game call at a time in this process, since the stream is the module's global one.
    """
    with _GAME_LOCK:
        saved = random.getstate()
        random.setstate(state["random"])
        try:
            yield
        finally:
            state["random"] = random.getstate()
            random.setstate(saved)


@contextlib.contextmanager
def no_downloads(game: str) -> Iterator[None]:
    """``nltk.download`` raises instead of reaching for the network while a game is made."""
    try:
        import nltk
    except ImportError:  # textarena needs nltk, but a game module may not: nothing to guard
        yield
        return

    def refuse(info_or_id: Any = None, *args: Any, **kwargs: Any) -> bool:
        raise OfflineUnavailable(
            f"TextArena's {game} downloads nltk data ({info_or_id!r}) when it is imported; envhub environments "
            "run offline (the docker runtime's container has no network), so this game cannot be used"
        )

    with _GAME_LOCK:
        original = nltk.download
        nltk.download = refuse
        try:
            yield
        finally:
            nltk.download = original


def make_game(game: str) -> Any:
    """TextArena's ``game`` without its observation wrappers (envhub writes the turns) but with its
    registered action wrappers (they are part of how the game reads a move)."""
    import textarena
    from textarena.envs.registration import ENV_REGISTRY

    spec = ENV_REGISTRY.get(game)
    if spec is None:
        from envhub.errors import suggest

        near = suggest(game, [g for g in ENV_REGISTRY if not g.endswith(("-raw", "-train"))])
        raise InvalidOptionError(game, "game", "not a TextArena game" + (f"; did you mean {', '.join(near)}?" if near else ""))
    try:
        with no_downloads(game):
            env = textarena.make(f"{game}-raw" if f"{game}-raw" in ENV_REGISTRY else game)
    except OfflineUnavailable as exc:
        raise InvalidOptionError(game, "game", str(exc)) from None
    except Exception as exc:  # the game's module does not import here (a SyntaxError, a missing key...)
        raise InvalidOptionError(game, "game", f"TextArena's {game} cannot be made: {type(exc).__name__}: {exc}") from exc
    for wrapper in spec.default_wrappers or []:
        if issubclass(wrapper, textarena.ActionWrapper):
            env = wrapper(env)
    return env


def listed_moves(text: str) -> list[str]:
    """The moves of the last line of ``text`` that lists moves (``Available Moves: '[0]', '[4]'``)."""
    lines = _LISTING.findall(text)
    return _MOVE.findall(lines[-1]) if lines else []


def render(messages: Sequence[tuple], *, seat: int, roles: dict[int, str]) -> tuple[str, str]:
    """(the game's prompt, everything else) of what one seat was shown, as TextArena's LLM wrapper
    writes it; the seat's own moves are left out (they are already its messages)."""
    from textarena import ObservationType

    prompt, lines = [], []
    for sender, text, kind in messages:
        if kind == ObservationType.PROMPT:
            prompt.append(text)
        elif kind == ObservationType.PLAYER_ACTION and sender == seat:
            continue
        else:
            name = "GAME" if sender == GAME_ID else roles.get(sender, f"Player {sender}")
            lines.append(f"[{name}] {text}")
    return "\n".join(prompt), "\n".join(lines)


class GameReward(Criterion):
    """The game's own reward for the model's seat, in [0, 1] (see the module docstring)."""

    kind = "function"

    def __init__(self, env: TextArenaEnv) -> None:
        super().__init__("game_reward", weight=1.0)
        self.env = env

    def fingerprint(self) -> str:
        env = self.env
        what = repr((env.game, env.players, env.player, env.opponent, env.package_version))
        return hashlib.sha256((inspect.getsource(GameReward.check) + what).encode()).hexdigest()

    def check(self, episode: Episode) -> Score:
        outcome = episode.state.get("outcome")
        if outcome is None:
            raise Unscored(f"the game did not end within {episode.max_turns} turns, so it gave no reward")
        reward, players = outcome["reward"], outcome["players"]
        score = min(max(reward, 0.0), 1.0) if players == 1 else (reward + 1.0) / 2.0
        return Score(score, f"the game's reward {reward:+g}: {outcome['reason'] or 'no reason given'}")


class TextArenaEnv(SeedTasks, ChatEnv):
    """One TextArena game, the model in seat ``player`` of ``players``, the others played by ``opponent``.

    Args:
        game: a TextArena game id (``TicTacToe-v0``).
        players: seats in the game.
        player: the model's seat.
        opponent: ``greedy``, ``random``, ``first-legal`` (among the moves the game lists) or ``model``.
        opponent_model, opponent_base_url: the model and OpenAI-compatible endpoint of a ``model``
            opponent (its API key is read from ``ENVHUB_OPPONENT_API_KEY``, else ``ENVHUB_API_KEY``).
        opponent_temperature: its sampling temperature.
        package_version: the textarena version the folder was imported from (in the rubric's hash).
    """

    max_turns = 50

    def __init__(
        self,
        *,
        game: str,
        players: int = 2,
        player: int = 0,
        opponent: str = "greedy",
        opponent_model: str | None = None,
        opponent_base_url: str | None = None,
        opponent_temperature: float = 0.7,
        package_version: str | None = None,
        max_turns: int | None = None,
        render_mode: str | None = None,
    ) -> None:
        super().__init__(max_turns=max_turns, render_mode=render_mode)
        if not isinstance(players, int) or players < 1:
            raise InvalidOptionError(self.env_name, "players", f"must be an int >= 1, got {players!r}")
        if not isinstance(player, int) or not 0 <= player < players:
            raise InvalidOptionError(self.env_name, "player", f"must be a seat from 0 to {players - 1}, got {player!r}")
        if opponent not in OPPONENTS:
            raise InvalidOptionError(self.env_name, "opponent", f"{opponent!r} is not one of {', '.join(OPPONENTS)}")
        if opponent == "model" and not (opponent_model and opponent_base_url):
            raise InvalidOptionError(self.env_name, "opponent", "a model opponent needs opponent_model and opponent_base_url")
        self.game, self.players, self.player, self.opponent = game, players, player, opponent
        self.opponent_model, self.opponent_base_url = opponent_model, opponent_base_url
        self.opponent_temperature = float(opponent_temperature)
        self.package_version = package_version
        make_game(game)  # fails now, with the reason, for a game that cannot be made here
        self.rubric = Rubric([GameReward(self)])

    def initial_messages(self, task: Task) -> list[Msg]:
        return [system(self._header())]  # setup_episode adds the game's own prompt and first turn

    def _header(self) -> str:
        others = "" if self.players == 1 else f"; the other seats are played by a {self.opponent} opponent"
        return f"You are playing the TextArena game {self.game} as Player {self.player}{others}. Each of your messages is your move."

    # --- the episode ----------------------------------------------------------------------------

    def setup_episode(self, episode: Episode) -> None:
        state = episode.state
        state["random"] = random.Random(episode.task["seed"]).getstate()
        state["game"] = game = make_game(self.game)
        state["opponents"] = {}
        with game_random(state):
            try:
                game.reset(num_players=self.players, seed=episode.task["seed"])
            except Exception as exc:
                raise EnvironmentFailure(self.env_name, "reset", f"TextArena's {self.game} raised {type(exc).__name__}: {exc}") from exc
        done = self._play_opponents(episode)
        prompt, shown = self._shown(episode)
        episode.messages[0] = system(f"{self._header()}\n\n{prompt}".strip())
        episode.messages.append(user(shown or "(the game shows nothing yet: make your move)"))
        if done:
            raise EnvironmentFailure(self.env_name, "reset", f"TextArena's {self.game} ended before the model's first move")

    def respond(self, episode: Episode, action: str) -> Reply:
        state = episode.state
        done = self._step(episode, action, seat=self.player)
        if not done:
            done = self._play_opponents(episode)
        _, shown = self._shown(episode)
        if not done:
            return Reply(messages=[user(shown)])
        outcome = self._finish(episode)
        ending = f"[GAME] The game is over: {outcome['reason'] or 'it ended'}."
        return Reply(done=True, messages=[user(f"{shown}\n{ending}".strip())], info={"game": dict(outcome, turns=state["game"].state.turn)})

    def teardown_episode(self, episode: Episode) -> None:
        episode.state.pop("game", None)
        for opponent in episode.state.pop("opponents", {}).values():
            client = opponent.get("client")
            if client is not None:  # its connections belong to envhub's I/O thread
                run_blocking(client.aclose())

    # --- inside the game ------------------------------------------------------------------------

    def _step(self, episode: Episode, action: str, *, seat: int) -> bool:
        game = episode.state["game"]
        with game_random(episode.state):
            try:
                done, _ = game.step(action=action)
            except Exception as exc:  # the game's own bug: the episode ends with the error, unscored
                who = "the model's" if seat == self.player else f"Player {seat}'s"
                raise EnvironmentFailure(
                    self.env_name, "respond",
                    f"TextArena's {self.game} raised {type(exc).__name__}: {exc} on {who} move {action[:80]!r}; the episode has no reward",
                ) from exc
        return bool(done)

    def _play_opponents(self, episode: Episode) -> bool:
        """Let the other seats move until it is the model's turn again; True when the game ended."""
        game = episode.state["game"]
        for _ in range(_MAX_OPPONENT_MOVES):
            if game.state.done:
                return True
            seat = game.state.current_player_id
            if seat == self.player:
                return False
            self._step(episode, self._opponent_move(episode, seat), seat=seat)
        raise EnvironmentFailure(self.env_name, "respond", f"the opponents made {_MAX_OPPONENT_MOVES} moves without the game reaching the model's turn")

    def _take(self, episode: Episode, seat: int) -> tuple[str, str]:
        game = episode.state["game"]
        with _GAME_LOCK:
            messages, game.state.observations[seat] = game.state.observations[seat], []
        return render(messages, seat=seat, roles=game.state.role_mapping)

    def _shown(self, episode: Episode) -> tuple[str, str]:
        return self._take(episode, self.player)

    def _opponent_move(self, episode: Episode, seat: int) -> str:
        memory = episode.state["opponents"].setdefault(seat, {"moves": [], "messages": []})
        prompt, shown = self._take(episode, seat)
        if self.opponent == "model":
            return self._model_move(episode, seat, memory, prompt, shown)
        moves = listed_moves(shown) or memory["moves"]  # the last list it saw, when this turn showed none
        if not moves:
            raise EnvironmentFailure(
                self.env_name, "respond",
                f"TextArena's {self.game} listed no legal moves for Player {seat}, so the {self.opponent} opponent cannot play it",
            )
        memory["moves"] = moves
        if self.opponent == "first-legal":
            return moves[0]
        order = [moves[i] for i in episode.rng.permutation(len(moves))]
        if self.opponent == "greedy":
            return self._greedy_move(episode, seat, order)
        return order[0]

    def _greedy_move(self, episode: Episode, seat: int, moves: list[str]) -> str:
        """A move that wins at once, else one after which the next seat cannot win at once, else the first."""
        safe = None
        for move in moves[:_GREEDY_WIDTH]:
            after = self._try(episode, episode.state["game"], move)
            if after is None:
                continue  # the game would refuse it
            if after.state.done:
                if (after.state.rewards or {}).get(seat, 0) > 0:
                    return move
                continue
            if safe is None and not self._next_seat_wins(episode, after, seat):
                safe = move
        return safe or moves[0]

    def _next_seat_wins(self, episode: Episode, game: Any, seat: int) -> bool:
        nxt = game.state.current_player_id
        if nxt == seat:
            return False
        _, shown = render(game.state.observations[nxt], seat=nxt, roles=game.state.role_mapping)
        for reply in listed_moves(shown)[:_GREEDY_WIDTH]:
            after = self._try(episode, game, reply)
            if after is not None and after.state.done and (after.state.rewards or {}).get(nxt, 0) > (after.state.rewards or {}).get(seat, 0):
                return True
        return False

    def _try(self, episode: Episode, game: Any, move: str) -> Any | None:
        """The game after ``move``, on a copy (and a copy of its random stream); None when it is refused or raises."""
        trial = {"random": episode.state["random"]}
        with game_random(trial):
            try:
                copied = copy.deepcopy(game)
                copied.step(action=move)
            except Exception:  # a move the game cannot take is no candidate
                return None
        # TextArena clears made_invalid_move at the end of a step; a refused move shows as one more error
        refused = getattr(copied.state, "error_count", 0) > getattr(game.state, "error_count", 0)
        return None if refused else copied

    def _model_move(self, episode: Episode, seat: int, memory: dict, prompt: str, shown: str) -> str:
        from envhub.http.chat import api_key_from_env, chat_sync
        from envhub.http.transport import ConnectionPool

        messages = memory["messages"]
        if not messages:
            messages.append(system(prompt or f"You are Player {seat} in {self.game}."))
        messages.append(user(shown or "Your move."))
        if memory.get("client") is None:
            memory["client"] = ConnectionPool.for_url(self.opponent_base_url)
        body = {
            "model": self.opponent_model, "messages": messages, "temperature": self.opponent_temperature,
            "max_tokens": 512, "seed": int(episode.rng.integers(2**31)),
        }  # fmt: skip
        result = chat_sync(memory["client"], self.opponent_base_url, body, api_key=api_key_from_env("ENVHUB_OPPONENT_API_KEY"))
        messages.append(assistant(result.text))
        return result.text

    def _finish(self, episode: Episode) -> dict[str, Any]:
        game = episode.state["game"]
        with game_random(episode.state):
            rewards, info = game.close()
        if not rewards or self.player not in rewards:
            raise EnvironmentFailure(self.env_name, "respond", f"TextArena's {self.game} ended without a reward for Player {self.player}: {rewards!r}")
        seat_info = (info or {}).get(self.player, {})
        episode.state["outcome"] = outcome = {
            "reward": float(rewards[self.player]),
            "players": self.players,
            "reason": str(seat_info.get("reason") or ""),
            "invalid_move": bool(seat_info.get("invalid_move", False)),
        }
        return outcome

