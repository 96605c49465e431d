"""Rubrics: weighted criteria that score a finished episode.

A criterion returns a score in [0, 1] and, optionally, a reason. The rubric's total is the weighted
mean ``sum(w_i * s_i) / sum(w_i)``, so it stays in [0, 1] whatever the weights; a weight of 0 keeps a
criterion in the report without rewarding it. Every rubric has a stable hash (names, weights and the
source of each check), recorded with every score so results say which rubric produced them.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

from envhub.errors import CriterionError, JudgeError, Unscored

if TYPE_CHECKING:
    from envhub.env.core import Episode


@dataclass(frozen=True)
class Score:
    """What a criterion returns: a value in [0, 1] and why."""

    value: float
    reason: str | None = None


ScoreLike = Union[float, int, bool, Score, "tuple[float, str]"]


@dataclass(frozen=True)
class CriterionResult:
    """One criterion's outcome in a :class:`RubricResult`. ``score`` is None when it could not score."""

    score: float | None
    weight: float
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, "weight": self.weight, "reason": self.reason}


@dataclass(frozen=True)
class RubricResult:
    """The rubric's verdict on one episode; ``to_dict()`` is what lands in ``info["rubric"]``."""

    total: float
    criteria: dict[str, CriterionResult]
    hash: str
    unscored: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "total": self.total,
            "hash": self.hash,
            "criteria": {name: r.to_dict() for name, r in self.criteria.items()},
        }
        if self.unscored:
            out["unscored"] = list(self.unscored)
        return out


def _coerce(name: str, value: Any) -> Score:
    """Turn what a check returned into a validated :class:`Score`, or raise CriterionError."""
    reason = None
    if isinstance(value, Score):
        value, reason = value.value, value.reason
    elif isinstance(value, tuple) and len(value) == 2:
        value, reason = value
    if isinstance(value, bool):
        value = float(value)
    if not isinstance(value, (int, float)) or isinstance(value, complex):
        raise CriterionError(name, f"returned {type(value).__name__} {value!r}, expected a float in [0, 1]")
    value = float(value)
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise CriterionError(name, f"returned {value}, outside [0, 1]")
    return Score(value, None if reason is None else str(reason))


class Criterion:
    """Base of every criterion. Subclasses implement :meth:`check` and :meth:`fingerprint`."""

    kind = "criterion"

    def __init__(self, name: str, *, weight: float = 1.0) -> None:
        if not name or not isinstance(name, str):
            raise CriterionError(repr(name), "a criterion needs a non-empty name")
        if not isinstance(weight, (int, float)) or math.isnan(weight) or weight < 0:
            raise CriterionError(name, f"weight must be a number >= 0, got {weight!r}")
        self.name = name
        self.weight = float(weight)

    def check(self, episode: Episode) -> ScoreLike:
        raise NotImplementedError

    def fingerprint(self) -> str:
        """A string that changes whenever what this criterion computes changes."""
        raise NotImplementedError

    def score(self, episode: Episode) -> Score:
        """Run the check and validate its result; any failure becomes a :class:`CriterionError`."""
        try:
            raw = self.check(episode)
        except (CriterionError, Unscored):
            raise
        except JudgeError as exc:
            raise CriterionError(self.name, str(exc)) from exc
        except Exception as exc:  # an author's check: report it under the criterion's name
            raise CriterionError(self.name, f"raised {type(exc).__name__}: {exc}") from exc
        return _coerce(self.name, raw)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, weight={self.weight})"


class FunctionCriterion(Criterion):
    """A verifiable check: a Python function of the finished :class:`~envhub.env.core.Episode`.

    The function returns a float in [0, 1], a bool, ``(score, reason)`` or a :class:`Score`.
    """

    kind = "function"

    def __init__(self, fn: Callable[[Episode], ScoreLike], *, name: str | None = None, weight: float = 1.0):
        super().__init__(name or fn.__name__, weight=weight)
        self.fn = fn
        self._fingerprint: str | None = None

    def check(self, episode: Episode) -> ScoreLike:
        return self.fn(episode)

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = self._source_hash()
        return self._fingerprint

    def _source_hash(self) -> str:
        try:
            source = textwrap.dedent(inspect.getsource(self.fn))
        except (OSError, TypeError):  # no source (e.g. built in a REPL): fall back to the bytecode
            code = getattr(self.fn, "__code__", None)
            source = code.co_code.hex() if code is not None else repr(self.fn)
        return hashlib.sha256(source.encode()).hexdigest()


def criterion(fn: Callable | None = None, *, name: str | None = None, weight: float = 1.0):
    """Decorator: ``@criterion(weight=0.8)`` turns a check function into a :class:`FunctionCriterion`."""

    def wrap(f: Callable) -> FunctionCriterion:
        return FunctionCriterion(f, name=name, weight=weight)

    return wrap(fn) if fn is not None else wrap


class Rubric:
    """A list of weighted criteria. ``score(episode)`` gives a :class:`RubricResult`."""

    def __init__(self, criteria: Sequence[Criterion | Callable], *, name: str = "rubric") -> None:
        built = [c if isinstance(c, Criterion) else FunctionCriterion(c) for c in criteria]
        if not built:
            raise CriterionError(name, "a rubric needs at least one criterion")
        names = [c.name for c in built]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise CriterionError(", ".join(dupes), "criterion names must be unique in a rubric")
        if sum(c.weight for c in built) <= 0:
            raise CriterionError(name, "at least one criterion needs a weight > 0")
        self.name = name
        self.criteria: list[Criterion] = built

    @property
    def hash(self) -> str:
        """Computed on each use: a judge criterion's model is read when scoring, not at import."""
        spec = [
            {"name": c.name, "kind": c.kind, "weight": c.weight, "fingerprint": c.fingerprint()}
            for c in sorted(self.criteria, key=lambda c: c.name)
        ]
        blob = json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()
        return "sha256:" + hashlib.sha256(blob).hexdigest()

    def score(self, episode: Episode) -> RubricResult:
        results: dict[str, CriterionResult] = {}
        unscored: list[str] = []
        for c in self.criteria:
            try:
                s = c.score(episode)
            except Unscored as exc:
                results[c.name] = CriterionResult(None, c.weight, str(exc))
                unscored.append(c.name)
                continue
            results[c.name] = CriterionResult(s.value, c.weight, s.reason)
        scored = [(r.score, r.weight) for r in results.values() if r.score is not None]
        weight = sum(w for _, w in scored)
        total = sum(s * w for s, w in scored) / weight if weight > 0 else 0.0
        return RubricResult(total=total, criteria=results, hash=self.hash, unscored=tuple(unscored))

    def describe(self) -> list[dict[str, Any]]:
        """Name, kind and weight of each criterion (the manifest's rubric summary)."""
        return [{"name": c.name, "kind": c.kind, "weight": c.weight} for c in self.criteria]

    def __repr__(self) -> str:
        return f"Rubric({self.criteria!r})"

