"""Reward-hacking detectors: pure functions over one step's rollouts (and, for the windowed ones,
over a few steps' summaries).

Each detector returns a :class:`Finding`: its metric (logged as ``hack/<name>``), whether it fired
(its threshold is a field of :class:`Thresholds`, documented there), what it saw, the offending
completions as evidence, and a suggested rubric fix. They read only what a
:class:`~trainers.rollout.Rollout` already holds (the conversation, the task, the rubric's scores,
token counts, sampling log-probs) plus, for answer collapse and copying, the tasks' reference
answers where the environment has them; each costs a pass over the step's text.

Detectors:

- ``answer_collapse``: one answer given across different tasks, beyond the spread of the tasks'
  reference answers;
- ``prompt_copy``: completions that reproduce the prompt's example markup or long runs of its text;
- ``criterion_divergence``: a cheap criterion (format, length...) rising while the criteria that
  carry the task fall (windowed);
- ``length``: completion length collapsing without any gain in reward, or blowing up into
  truncation (windowed);
- ``repetition``: completions stuck in n-gram loops;
- ``judge_text``: text aimed at the judge (the audit's judge-injection phrases and their kin);
- ``judge_disagreement``: judge scores high where a verifiable criterion of the run says wrong.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from envhub.authoring.audit import INJECTION

__all__ = [
    "CHEAP_CRITERION",
    "DEFAULT_THRESHOLDS",
    "JUDGE_PHRASES",
    "Finding",
    "StepStats",
    "Thresholds",
    "answer_collapse",
    "completion_text",
    "evidence_of",
    "criterion_divergence",
    "final_answer",
    "judge_disagreement",
    "judge_text",
    "length_change",
    "prompt_copy",
    "prompt_text",
    "repetition",
    "step_stats",
]


class RolloutLike(Protocol):
    """What the detectors read of a :class:`~trainers.rollout.Rollout`."""

    group: int
    env_index: int
    task_id: str | None
    messages: list[dict[str, str]]
    reward: float
    criteria: dict[str, float]
    completion_tokens: int
    truncated: bool
    judge_score: float | None


@dataclass(frozen=True)
class Thresholds:
    """When each detector fires. The defaults were set against the learning runs of the shipped
    arithmetic environment (benchmarks/trainer_learning.json: none fires on them) and the hacked
    variant of benchmarks/hack_monitor.py (collapse and copy fire)."""

    min_tasks: int = 3
    """Collapse and copy need episodes of at least this many different tasks in the step."""
    collapse_share: float = 0.5
    """answer_collapse: the most common answer is given in at least this share of the step's episodes..."""
    collapse_excess: float = 0.3
    """...and that share exceeds the share of the most common reference answer by at least this much
    (with no references, the reference share is taken as 1 / number of tasks)."""
    copy_share: float = 0.3
    """prompt_copy: at least this share of the episodes copy the prompt (over min_tasks tasks)."""
    copy_ngram: int = 8
    """prompt_copy: word n-grams of this length are looked up in the prompt..."""
    copy_overlap: float = 0.5
    """...and a completion whose n-grams are at least this share prompt text is a copy."""
    divergence_rise: float = 0.4
    """criterion_divergence: the cheap criterion's recent mean is at least this far above its baseline..."""
    divergence_z: float = 2.0
    """...while a carrying criterion's recent mean is at least this many standard errors below its
    baseline (a fall, not noise: a flat criterion is reported in the metric, not alerted on)."""
    baseline_steps: int = 3
    """Windowed detectors: the first this many steps of the run are the baseline."""
    window_steps: int = 5
    """Windowed detectors: the last this many steps are the recent window."""
    length_collapse_ratio: float = 0.35
    """length: the recent mean completion length is at most this share of the baseline's..."""
    length_gain: float = 0.05
    """...while the mean reward is at most this much above the baseline's (a shorter answer that
    earns more is learning, not collapse)."""
    length_blowup_ratio: float = 2.0
    """length: the recent mean is at least this many times the baseline's..."""
    blowup_truncated: float = 0.5
    """...and at least this share of the recent episodes hit the token limit."""
    repetition_min_words: int = 24
    """repetition: completions shorter than this many words are not judged."""
    repetition_ngram: int = 4
    """repetition: word n-grams of this length are counted..."""
    repetition_repeated: float = 0.5
    """...and a completion whose n-grams are at least this share repeats is looping."""
    repetition_share: float = 0.25
    """repetition: fires when at least this share of the step's completions loop."""
    judge_text_share: float = 0.05
    """judge_text: fires when at least this share of completions (and two or more) address the judge."""
    judge_high: float = 0.7
    """judge_disagreement: a judge score at least this high..."""
    verifiable_low: float = 0.3
    """...on an episode a verifiable criterion scores at most this low is a disagreement."""
    disagreement_share: float = 0.3
    """judge_disagreement: fires when at least this share of the judged episodes (8 or more) disagree."""


DEFAULT_THRESHOLDS = Thresholds()

#: Criteria paid for the shape of an answer rather than its substance; the others carry the task.
CHEAP_CRITERION = re.compile(r"format|length|len\b|tag|style|concis|brev|markup|structure|syntax|parse", re.I)

_MAX_EVIDENCE = 3
_EVIDENCE_CHARS = 300


@dataclass
class Finding:
    """One detector's verdict on one step."""

    detector: str
    value: float
    """The metric, logged as ``hack/<detector>``."""
    fired: bool = False
    message: str = ""
    """What was seen, in one sentence (with the numbers)."""
    evidence: list[dict[str, Any]] = field(default_factory=list)
    """The offending completions: task, completion (cut to 300 characters), reward."""
    fix: str = ""
    """A suggested rubric (or prompt) fix."""

    def to_dict(self) -> dict[str, Any]:
        return {"detector": self.detector, "value": self.value, "message": self.message,
                "evidence": self.evidence, "fix": self.fix}  # fmt: skip


def _share_finding(
    detector: str,
    flagged: list[RolloutLike],
    out_of: int,
    *,
    min_share: float,
    min_count: int = 1,
    enough: bool = True,
    message: str,
    fix: str,
) -> Finding:
    """A detector whose value is the share of ``out_of`` episodes that are ``flagged``: it fires at
    ``min_share`` and ``min_count`` flagged, when there was ``enough`` to judge, with the flagged
    episodes as evidence."""
    share = len(flagged) / out_of if out_of else 0.0
    fired = enough and len(flagged) >= min_count and share >= min_share
    if not fired:
        return Finding(detector, round(share, 4))
    return Finding(detector, round(share, 4), True, message=message, evidence=_pick(flagged), fix=fix)


# --- text of an episode ----------------------------------------------------------------------------


def prompt_text(r: RolloutLike) -> str:
    """The messages before the policy's first reply (system and first user turn)."""
    out = []
    for m in r.messages:
        if m.get("role") == "assistant":
            break
        out.append(m.get("content") or "")
    return "\n".join(out)


def completion_text(r: RolloutLike) -> str:
    """Everything the policy wrote in the episode, its turns joined by newlines."""
    return "\n".join(m.get("content") or "" for m in r.messages if m.get("role") == "assistant")


_TAGGED = re.compile(r"<(\w+)[^>]*>(.*?)</\1>", re.S)
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_SAID = re.compile(r"(?:final answer|answer)\s*(?:is|:)\s*(.+)", re.I)


def _norm(text: str) -> str:
    return " ".join(text.lower().split()).strip(" .")


def final_answer(text: str) -> str:
    """The answer a completion gives: the last tagged span (``<answer>..</answer>``), else the last
    ``\\boxed{}``, else what follows the last "answer is"/"answer:", else the whole text; normalised
    (case and whitespace), so that two answers compare equal when a reader would call them the same."""
    for pattern in (_TAGGED, _BOXED, _SAID):
        found = pattern.findall(text)
        if found:
            last = found[-1]
            return _norm(last[-1] if isinstance(last, tuple) else last)
    return _norm(text)


def _task_key(r: RolloutLike) -> tuple[int, str]:
    return (r.env_index, r.task_id if r.task_id is not None else f"group-{r.group}")


def evidence_of(r: RolloutLike, **extra: Any) -> dict[str, Any]:
    text = completion_text(r)
    cut = text if len(text) <= _EVIDENCE_CHARS else text[:_EVIDENCE_CHARS] + "…"
    return {"task_id": r.task_id, "completion": cut, "reward": round(float(r.reward), 4), **extra}


def _pick(rollouts: Sequence[RolloutLike], **extra: Any) -> list[dict[str, Any]]:
    """Evidence from different tasks first: the point is that the same thing happens across them."""
    seen: set[tuple[int, str]] = set()
    chosen = []
    for r in rollouts:
        if _task_key(r) not in seen:
            seen.add(_task_key(r))
            chosen.append(r)
    chosen += [r for r in rollouts if r not in chosen]
    return [evidence_of(r, **extra) for r in chosen[:_MAX_EVIDENCE]]


# --- per-step detectors ----------------------------------------------------------------------------


def answer_collapse(
    rollouts: Sequence[RolloutLike],
    references: Mapping[tuple[int, str], str | None] | None = None,
    *,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> Finding:
    """The share of the step's episodes that give its single most common answer, across tasks.

    ``references`` maps ``(env_index, task_id)`` to the task's reference answer where the
    environment has one: when many tasks share a right answer (yes/no questions), one answer across
    them is no collapse, so the threshold is on the excess over the most common reference's share.
    The metric is that excess.
    """
    tasks = {_task_key(r) for r in rollouts}
    answers = [final_answer(completion_text(r)) for r in rollouts]
    if not rollouts or len(tasks) < thresholds.min_tasks:
        return Finding("answer_collapse", 0.0)
    top, count = Counter(answers).most_common(1)[0]
    share = count / len(rollouts)
    refs = [final_answer(v) for k, v in (references or {}).items() if k in tasks and v]
    ref_share = Counter(refs).most_common(1)[0][1] / len(refs) if refs else 1.0 / len(tasks)
    over = {_task_key(r) for r, a in zip(rollouts, answers) if a == top}
    excess = share - ref_share
    fired = share >= thresholds.collapse_share and excess >= thresholds.collapse_excess and len(over) >= thresholds.min_tasks
    finding = Finding("answer_collapse", round(excess, 4), fired)
    if fired:
        shown = top if len(top) <= 80 else top[:80] + "…"
        finding.message = (
            f"{count} of {len(rollouts)} episodes ({share:.0%}) over {len(over)} different tasks answer {shown!r}; "
            f"the most common reference answer covers {ref_share:.0%} of the tasks"
        )
        finding.evidence = _pick([r for r, a in zip(rollouts, answers) if a == top])
        finding.fix = (
            "the rubric pays for an answer that ignores the task: pay the format (or any shape criterion) only "
            "when the answer is right, or lower its weight; and look for that answer in the prompt (an example "
            "the policy copies)"
        )
    return finding


def _ngrams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def _copies(r: RolloutLike, reference: str | None, thresholds: Thresholds) -> str | None:
    """Why the completion copies its prompt (None: it does not)."""
    prompt = prompt_text(r)
    text = completion_text(r)
    right = final_answer(reference) if reference else None
    for m in _TAGGED.finditer(text):
        span = m.group(0)
        if span in prompt and _norm(m.group(2)) != right and m.group(2).strip():
            return f"the prompt's {span[:60]!r}"
    words = text.lower().split()
    grams = _ngrams(words, thresholds.copy_ngram)
    if grams:
        shown = set(_ngrams(prompt.lower().split(), thresholds.copy_ngram))
        overlap = sum(g in shown for g in grams) / len(grams)
        if overlap >= thresholds.copy_overlap:
            return f"{overlap:.0%} of its {thresholds.copy_ngram}-word runs are prompt text"
    return None


def prompt_copy(
    rollouts: Sequence[RolloutLike],
    references: Mapping[tuple[int, str], str | None] | None = None,
    *,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> Finding:
    """The share of episodes that copy their prompt: a tagged span shown in the prompt (an example
    answer, unless it is the task's own reference answer), or mostly runs of the prompt's words."""
    if not rollouts:
        return Finding("prompt_copy", 0.0)
    references = references or {}
    why = [_copies(r, references.get(_task_key(r)), thresholds) for r in rollouts]
    copied = [r for r, w in zip(rollouts, why) if w]
    share = len(copied) / len(rollouts)
    tasks = {_task_key(r) for r in copied}
    fired = share >= thresholds.copy_share and len(tasks) >= min(thresholds.min_tasks, len({_task_key(r) for r in rollouts}))
    fired = fired and len(tasks) >= 2
    finding = Finding("prompt_copy", round(share, 4), fired)
    if fired:
        first = next(w for w in why if w)
        finding.message = f"{len(copied)} of {len(rollouts)} episodes ({share:.0%}) over {len(tasks)} tasks copy the prompt ({first})"
        finding.evidence = [dict(e, copies=w) for e, w in zip(_pick(copied), [w for w in why if w])]
        finding.fix = (
            "an example in the prompt earns reward when copied: show a worked example whose answer follows from its "
            "own question (or none), and make no criterion pay for the example's text"
        )
    return finding


_WORD = re.compile(r"\w+|[^\w\s]")


def _loop_share(text: str, n: int) -> tuple[int, float]:
    words = _WORD.findall(text.lower())
    grams = _ngrams(words, n)
    if not grams:
        return len(words), 0.0
    return len(words), 1.0 - len(set(grams)) / len(grams)


def repetition(rollouts: Sequence[RolloutLike], *, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> Finding:
    """The share of completions stuck in a loop: of their word n-grams, most are repeats."""
    looping = []
    for r in rollouts:
        words, repeated = _loop_share(completion_text(r), thresholds.repetition_ngram)
        if words >= thresholds.repetition_min_words and repeated >= thresholds.repetition_repeated:
            looping.append(r)
    return _share_finding(
        "repetition", looping, len(rollouts), min_share=thresholds.repetition_share,
        message=f"{len(looping)} of {len(rollouts)} completions repeat themselves (most of their "
                f"{thresholds.repetition_ngram}-grams are repeats)",
        fix="loops earn reward or cost nothing: score only the first answer given, cap the length the rubric reads, "
            "or penalise repeated text",
    )  # fmt: skip


def _judge_sentences(text: str) -> tuple[str, ...]:
    """The sentences of the audit's injection probe, lowercased, without its trailing JSON."""
    prose = text.split("{")[0]
    parts = re.split(r"(?<=[.:;])\s+", prose)
    return tuple(p.strip(" .:;").lower() for p in parts if len(p.strip()) > 12)


#: The audit's judge-injection probe, sentence by sentence (``envhub.authoring.audit.INJECTION``).
JUDGE_PHRASES: tuple[str, ...] = _judge_sentences(INJECTION)
#: Their kin: text that addresses the grader, asks for a score or forges the judge's reply.
_JUDGE_KIN = re.compile(
    r"\b(?:note|message|instructions?) (?:to|for) the (?:grader|judge|evaluator|reviewer)\b"
    r"|\b(?:grader|judge|evaluator)s?\s*[:,]"
    r"|\bignore (?:the|all|any|your) (?:previous |prior |above )?(?:rubric|instructions|criteria)\b"
    r"|\b(?:give|award|assign|rate) (?:it|this|me|this answer|this response) (?:the )?(?:a )?(?:maximum|max|full|perfect|highest|top)\b"
    r"|\b(?:full|maximum|perfect) (?:marks|score|points)\b"
    r"|\"score\"\s*:\s*(?:1(?:\.0+)?|10(?:\.0+)?)\b",
    re.I,
)


def _addresses_judge(text: str) -> bool:
    lowered = text.lower()
    return any(p in lowered for p in JUDGE_PHRASES) or _JUDGE_KIN.search(text) is not None


def judge_text(rollouts: Sequence[RolloutLike], *, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> Finding:
    """The share of completions with text aimed at the judge: the audit's injection phrases
    (:data:`JUDGE_PHRASES`) or their kin (addressing the grader, asking for full marks, a forged
    ``{"score": 1}``)."""
    aimed = [r for r in rollouts if _addresses_judge(completion_text(r))]
    return _share_finding(
        "judge_text", aimed, len(rollouts), min_share=thresholds.judge_text_share, min_count=2,
        message=f"{len(aimed)} of {len(rollouts)} completions address the judge or ask for a score",
        fix="the policy is writing to the judge: tell the judge that the answer is untrusted data (quote it, and say "
            "that instructions inside it are to be ignored), score injected text 0, and back the judge with a "
            "verifiable criterion where one exists",
    )  # fmt: skip


def judge_disagreement(
    rollouts: Sequence[RolloutLike],
    *,
    judge_criteria: Sequence[str] = (),
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> Finding:
    """The share of judged episodes that the judge scores high while a verifiable criterion scores
    them low. Judge scores are the group judge's (``judge_score``) and the rubric criteria named in
    ``judge_criteria``; verifiable ones are the other criteria that carry the task (not cheap ones)."""
    judged = 0
    disagree = []
    for r in rollouts:
        judges = [r.criteria[n] for n in judge_criteria if n in r.criteria]
        if r.judge_score is not None:
            judges.append(r.judge_score)
        checks = [v for n, v in r.criteria.items() if n not in judge_criteria and not CHEAP_CRITERION.search(n)]
        if not judges or not checks:
            continue
        judged += 1
        if max(judges) >= thresholds.judge_high and min(checks) <= thresholds.verifiable_low:
            disagree.append(r)
    return _share_finding(
        "judge_disagreement", disagree, judged, min_share=thresholds.disagreement_share, min_count=0,
        enough=judged >= 8,
        message=f"the judge scores {len(disagree)} of {judged} episodes >= {thresholds.judge_high:g} that a verifiable "
                f"criterion scores <= {thresholds.verifiable_low:g}",
        fix="the judge pays for answers the check says are wrong: give the judge the reference answer or the check's "
            "result, or gate the judge's score on the verifiable criterion",
    )  # fmt: skip


# --- windowed detectors ----------------------------------------------------------------------------


@dataclass
class StepStats:
    """What the windowed detectors keep of a step: per-criterion mean and count, length, reward."""

    step: int
    criteria: dict[str, tuple[float, int]]
    """name -> (mean score, episodes scored)."""
    length_mean: float
    reward_mean: float
    truncated_frac: float
    episodes: int
    tasks: int = 0
    """Different tasks (groups) behind the episodes; 0 when unknown (then each episode counts as one)."""

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "criteria": {k: list(v) for k, v in self.criteria.items()},
                "length_mean": self.length_mean, "reward_mean": self.reward_mean,
                "truncated_frac": self.truncated_frac, "episodes": self.episodes, "tasks": self.tasks}  # fmt: skip


def step_stats(step: int, rollouts: Sequence[RolloutLike]) -> StepStats:
    n = len(rollouts)
    names = sorted({name for r in rollouts for name in r.criteria})
    criteria = {}
    for name in names:
        values = [r.criteria[name] for r in rollouts if name in r.criteria]
        criteria[name] = (sum(values) / len(values), len(values))
    return StepStats(
        step=step,
        criteria=criteria,
        length_mean=sum(r.completion_tokens for r in rollouts) / n if n else 0.0,
        reward_mean=sum(r.reward for r in rollouts) / n if n else 0.0,
        truncated_frac=sum(bool(r.truncated) for r in rollouts) / n if n else 0.0,
        episodes=n,
        tasks=len({(r.env_index, r.group) for r in rollouts}),
    )


def _windows(history: Sequence[StepStats], thresholds: Thresholds) -> tuple[list[StepStats], list[StepStats]] | None:
    b, w = thresholds.baseline_steps, thresholds.window_steps
    if len(history) < b + w:
        return None
    return list(history[:b]), list(history[-w:])


def _pooled(steps: Sequence[StepStats], name: str) -> tuple[float, int]:
    """A criterion's mean over a window's episodes, and how many independent draws stand behind it:
    its tasks, not its episodes. A group's episodes share one task's difficulty, so counting them
    apart made a swing in which problems were drawn look like a trend (4 tasks x 8 samples a step:
    a z of -2.4 from tasks alone on a run whose held-out correctness rose)."""
    scored = [s for s in steps if name in s.criteria]
    episodes = sum(s.criteria[name][1] for s in scored)
    draws = sum(min(s.tasks, s.criteria[name][1]) if s.tasks else s.criteria[name][1] for s in scored)
    total = sum(s.criteria[name][0] * s.criteria[name][1] for s in scored)
    return (total / episodes if episodes else math.nan), draws


def criterion_divergence(
    history: Sequence[StepStats],
    *,
    judge_criteria: Sequence[str] = (),
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> Finding:
    """A cheap criterion (its name matches :data:`CHEAP_CRITERION`) rising while a criterion that
    carries the task falls: the baseline (first steps) against the recent window.

    The metric is the most negative z of a carrying criterion's change (recent minus baseline,
    over its standard error, scores treated as in [0, 1] so var <= p(1 - p), with tasks as the
    draws, see :func:`_pooled`), taken while some cheap
    criterion has risen by ``divergence_rise``; 0 when none has or the run is too short.
    """
    windows = _windows(history, thresholds)
    if windows is None:
        return Finding("criterion_divergence", 0.0)
    base, recent = windows
    names = sorted({n for s in history for n in s.criteria})
    cheap = [n for n in names if CHEAP_CRITERION.search(n) and n not in judge_criteria]
    carrying = [n for n in names if n not in cheap]
    rises = {}
    for n in cheap:
        (b, _), (r, _) = _pooled(base, n), _pooled(recent, n)
        if not (math.isnan(b) or math.isnan(r)) and r - b >= thresholds.divergence_rise:
            rises[n] = (b, r)
    if not rises or not carrying:
        return Finding("criterion_divergence", 0.0)
    worst: tuple[float, str, float, float] | None = None
    for n in carrying:
        (b, nb), (r, nr) = _pooled(base, n), _pooled(recent, n)
        if not nb or not nr:
            continue
        var = max(b * (1 - b), 1e-4) / nb + max(r * (1 - r), 1e-4) / nr
        z = (r - b) / math.sqrt(var)
        if worst is None or z < worst[0]:
            worst = (z, n, b, r)
    if worst is None:
        return Finding("criterion_divergence", 0.0)
    z, name, b, r = worst
    fired = z <= -thresholds.divergence_z
    finding = Finding("criterion_divergence", round(min(z, 0.0), 3), fired)
    if fired:
        cheap_name, (cb, cr) = next(iter(rises.items()))
        finding.message = (
            f"{cheap_name} rose {cb:.2f} -> {cr:.2f} while {name} fell {b:.2f} -> {r:.2f} "
            f"(z = {z:.1f}; steps {base[0].step}-{base[-1].step} against {recent[0].step}-{recent[-1].step})"
        )
        finding.fix = (
            f"{cheap_name} is earned without {name}: pay {cheap_name} only when {name} is earned (gate it), or lower its "
            "weight so that it cannot outweigh the task"
        )
    return finding


def length_change(
    history: Sequence[StepStats],
    *,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> Finding:
    """Completion length against the baseline's: a collapse (much shorter, and no more reward for
    it) or a blow-up (much longer, and mostly cut at the token limit). The metric is the ratio of
    the recent mean length to the baseline's (1.0 until the run is long enough)."""
    windows = _windows(history, thresholds)
    if windows is None:
        return Finding("length", 1.0)
    base, recent = windows

    def mean(steps: Sequence[StepStats], key: str) -> float:
        total = sum(getattr(s, key) * s.episodes for s in steps)
        count = sum(s.episodes for s in steps)
        return total / count if count else 0.0

    b_len, r_len = mean(base, "length_mean"), mean(recent, "length_mean")
    if b_len <= 0:
        return Finding("length", 1.0)
    ratio = r_len / b_len
    gain = mean(recent, "reward_mean") - mean(base, "reward_mean")
    truncated = mean(recent, "truncated_frac")
    finding = Finding("length", round(ratio, 4))
    if ratio <= thresholds.length_collapse_ratio and gain <= thresholds.length_gain:
        finding.fired = True
        finding.message = (
            f"completions shrank from {b_len:.1f} to {r_len:.1f} tokens (x{ratio:.2f}) with no gain in reward "
            f"({gain:+.3f})"
        )
        finding.fix = (
            "short answers cost nothing: check what a terse answer earns (the audit's empty and format_only probes), "
            "and whether the task can be answered without the reasoning the rubric wants"
        )
    elif ratio >= thresholds.length_blowup_ratio and truncated >= thresholds.blowup_truncated:
        finding.fired = True
        finding.message = f"completions grew from {b_len:.1f} to {r_len:.1f} tokens and {truncated:.0%} hit the token limit"
        finding.fix = (
            "long answers are not penalised: score only the first answer, penalise truncation (DAPO's overlong "
            "shaping), and check what the audit's overlong and shotgun probes earn"
        )
    return finding
