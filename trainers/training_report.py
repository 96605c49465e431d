"""``report.html`` of a training run: one self-contained page, like the evaluation report.

Drawn from what the run folder holds (so ``envhub report RUN`` rebuilds it, and the trainer
rewrites it after every step): ``metrics.jsonl`` (reward per criterion, completion length, entropy,
clip fraction, KL, the sentinel's test reward beside training reward, the monitor's alerts),
``samples.jsonl`` (a few completions per step with their rubric scores and reasons) and the run's
recorded config (``run.json`` or ``provenance.json``). Plots are inline SVG with the steps where an
alert fired marked on every timeline; nothing is loaded from the network.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from envhub.evaluation.report import _CSS, _H, _PAD_B, _PAD_L, _PAD_R, _PAD_T, _SMALL, _W, _axes, _esc, _fmt
from envhub.evaluation.results import OUTPUT_MODE
from envhub.identity.artifact import write_atomic

__all__ = ["TRAINING_REPORT_FILE", "render_training_report", "svg_lines", "write_training_report"]

TRAINING_REPORT_FILE = "report.html"
_COLOURS = ("#3b6fb6", "#2e8b57", "#b8860b", "#8a3ffc", "#d0362f", "#00838f", "#6d4c41", "#c2185b")
_ALERT = "#d0362f"
_MAX_STEPS_SHOWN = 300


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The complete rows of a JSONL file (a torn last line, mid-write, is left out)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def _label(value: float, top: float) -> str:
    """A tick's label with as many digits as the axis' range needs (0.004 and 1.25 both readable)."""
    if top >= 20:
        return f"{value:.0f}"
    digits = max(2, 1 - math.floor(math.log10(top))) if top > 0 else 2
    return f"{value:.{digits}f}"


def _step_ticks(lo: float, hi: float) -> list[int]:
    """At most six whole steps from lo to hi, evenly spaced."""
    span = max(int(hi - lo), 1)
    every = max(1, math.ceil(span / 5))
    return list(range(int(lo), int(hi) + 1, every))


def svg_lines(
    title: str,
    series: dict[str, Sequence[tuple[float, float]]],
    *,
    y_max: float | None = None,
    y_label: str = "",
    marks: Sequence[tuple[float, str]] = (),
) -> str:
    """A line chart as an SVG string: one polyline (with its points) per series, over the steps;
    ``marks`` are vertical lines (an alert's step and what it says)."""
    points = [(x, y) for pts in series.values() for x, y in pts if not math.isnan(y)]
    xs = [x for x, _ in points] + [x for x, _ in marks]
    x_lo, x_hi = (min(xs), max(xs)) if xs else (0.0, 1.0)
    if x_hi == x_lo:
        x_hi = x_lo + 1
    top = y_max if y_max is not None else max([y for _, y in points] + [1e-9]) * 1.1
    if top <= 0:
        top = 1.0
    plot_w = _W - _PAD_L - _PAD_R
    plot_h = _H - _PAD_B - _PAD_T
    base_y = _PAD_T + 6 + plot_h

    def px(x: float) -> float:
        return _PAD_L + plot_w * (x - x_lo) / (x_hi - x_lo)

    def py(y: float) -> float:
        return base_y - plot_h * min(max(y, 0.0) / top, 1.0)

    parts = _axes(title, top, y_label, tick=_label)
    for x, label in marks:
        parts.append(
            f'<line class="alert-mark" x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{_PAD_T + 6}" y2="{base_y}" '
            f'stroke="{_ALERT}" stroke-dasharray="3 2"><title>step {x:g}: {_esc(label)}</title></line>'
        )
    for i, (name, pts) in enumerate(series.items()):
        colour = _COLOURS[i % len(_COLOURS)]
        good = [(x, y) for x, y in pts if not math.isnan(y)]
        if len(good) > 1:
            path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in good)
            parts.append(f'<polyline class="series" fill="none" stroke="{colour}" stroke-width="1.6" points="{path}"/>')
        for x, y in good if len(good) <= 60 or len(pts) < 2 else good[:: max(len(good) // 60, 1)]:
            parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2" fill="{colour}"><title>{_esc(name)} step {x:g}: {_fmt(y)}</title></circle>')
        parts.append(
            f'<text x="{_PAD_L + 6 + 130 * (i % 3)}" y="{_H + 14 + 12 * (i // 3) - (12 if len(series) > 3 else 0)}"'
            f' font-size="10" fill="{colour}">■ {_esc(name)}</text>'
        )
    for x in _step_ticks(x_lo, x_hi):
        parts.append(f'<text x="{px(x):.1f}" y="{base_y + 14}" text-anchor="middle"{_SMALL}>{x}</text>')
    parts.append(f'<line x1="{_PAD_L}" x2="{_W - _PAD_R}" y1="{base_y}" y2="{base_y}" stroke="#888"/>')
    parts.append("</svg>")
    return "".join(parts)


def _series(rows: Sequence[dict[str, Any]], key: str) -> list[tuple[float, float]]:
    return [(float(r["step"]), float(r[key])) for r in rows if isinstance(r.get(key), (int, float))]


def _plots(rows: Sequence[dict[str, Any]], marks: Sequence[tuple[float, str]]) -> list[str]:
    criteria = sorted({k for r in rows for k in r if k.startswith("reward/criterion/")})
    reward = {"reward (total)": _series(rows, "reward/mean")}
    reward.update({k.rsplit("/", 1)[-1]: _series(rows, k) for k in criteria})
    plots = [svg_lines("Training reward per criterion", reward, y_max=max(1.0, max((y for s in reward.values() for _, y in s), default=1.0)), y_label="mean score", marks=marks)]
    sentinel = {"training (sampled)": _series(rows, "reward/mean"), "test sentinel (greedy)": _series(rows, "sentinel/reward_mean")}
    sentinel.update({f"test {k.rsplit('/', 1)[-1]}": _series(rows, k) for k in sorted({k for r in rows for k in r if k.startswith("sentinel/criterion/")})})
    if sentinel["test sentinel (greedy)"]:
        plots.append(svg_lines("Training reward and held-out test reward", sentinel, y_max=1.0, y_label="reward", marks=marks))
    for key, title, label in (
        ("completion/len_mean", "Completion length", "tokens"),
        ("entropy/mean", "Entropy (sampled tokens' -log p)", "nats/token"),
        ("clip/frac", "Clip fraction", "share of tokens"),
        ("kl/mean", "KL to the base model", "KL"),
    ):
        points = _series(rows, key)
        if points:
            plots.append(svg_lines(title, {key: points}, y_label=label, marks=marks))
    hack = {k.split("/", 1)[1]: _series(rows, k) for k in ("hack/answer_collapse", "hack/prompt_copy", "hack/repetition", "hack/judge_text")}
    if any(hack.values()):
        plots.append(svg_lines("Monitor: shares of suspicious episodes", hack, y_max=1.0, y_label="share", marks=marks))
    return plots


def _alerts_table(alerts: Sequence[dict[str, Any]]) -> str:
    if not alerts:
        return "<p class='ok' id='no-alerts'>No alert: no detector fired.</p>"
    first: dict[str, dict[str, Any]] = {}
    steps: dict[str, list[int]] = {}
    for a in alerts:
        first.setdefault(a["detector"], a)
        steps.setdefault(a["detector"], []).append(a["step"])
    rows = []
    for name, a in first.items():
        evidence = "".join(
            f"<div class='msg assistant'>{_esc(e.get('task_id') or e.get('probe') or '')} "
            f"{_esc(e.get('completion') or e.get('sentinel') or '')}</div>"
            for e in a.get("evidence") or []
        )
        fired = steps[name]
        rows.append(
            f"<tr class='alert'><td><b>{_esc(name)}</b></td><td>{fired[0]}</td><td>{len(fired)} (last {fired[-1]})</td>"
            f"<td>{_esc(a.get('message'))}<details><summary>evidence</summary>{evidence}</details></td>"
            f"<td>{_esc(a.get('fix'))}</td></tr>"
        )
    return (
        "<table id='alerts'><tr><th>detector</th><th>first fired at step</th><th>steps firing</th><th>what was seen</th>"
        f"<th>suggested fix</th></tr>{''.join(rows)}</table>"
    )


def _samples(steps: Sequence[dict[str, Any]], alert_steps: dict[int, list[str]]) -> str:
    blocks = []
    for entry in reversed(steps[-_MAX_STEPS_SHOWN:]):  # the newest first
        step = entry.get("step")
        samples = entry.get("samples") or []
        mean = sum(s.get("reward", 0.0) for s in samples) / len(samples) if samples else float("nan")
        flag = f" · <span class='err'>alert: {_esc(', '.join(alert_steps[step]))}</span>" if step in alert_steps else ""
        body = []
        for s in samples:
            crit = s.get("criteria") or {}
            reasons = s.get("reasons") or {}
            table = "".join(
                f"<tr><td>{_esc(n)}</td><td>{_fmt(v)}</td><td>{_esc(reasons.get(n) or '')}</td></tr>" for n, v in crit.items()
            )
            mark = " <span class='err'>(evidence)</span>" if s.get("flagged") else ""
            body.append(
                f"<div class='sample'><div class='muted'>{_esc(s.get('task_id') or '')} · reward {_fmt(s.get('reward'))} · "
                f"{s.get('tokens')} tokens{' · truncated' if s.get('truncated') else ''}{mark}</div>"
                f"<div class='msg user'>{_esc(s.get('prompt'))}</div><div class='msg assistant'>{_esc(s.get('completion'))}</div>"
                f"<table>{table}</table></div>"
            )
        blocks.append(
            f"<details class='step' data-step='{step}'><summary>step {step} · {len(samples)} samples · mean reward "
            f"{_fmt(mean)}{flag}</summary>{''.join(body)}</details>"
        )
    return "".join(blocks) or "<p class='muted'>No samples yet.</p>"


def _recorded_config(run_dir: Path) -> dict[str, Any] | None:
    for name in ("run.json", "provenance.json"):
        path = run_dir / name
        if path.is_file():
            try:
                return json.loads(path.read_text()).get("config")
            except (OSError, ValueError):
                continue
    return None


def render_training_report(run_dir: str | Path, *, config: Any = None) -> str:
    """The page for the run in ``run_dir`` (``config``: the TrainConfig or its dict, else the
    folder's recorded one)."""
    run_dir = Path(run_dir)
    rows = _read_jsonl(run_dir / "metrics.jsonl")
    last = rows[-1]["step"] if rows else 0
    steps = [s for s in _read_jsonl(run_dir / "samples.jsonl") if s.get("step", 0) <= last]
    by_step = {s["step"]: s for s in steps}  # a step logged twice (a resumed run) shows its last
    steps = [by_step[k] for k in sorted(by_step)]
    alerts = [a for r in rows for a in r.get("hack/alerts") or []]
    alert_steps: dict[int, list[str]] = {}
    for a in alerts:
        alert_steps.setdefault(a["step"], []).append(a["detector"])
    marks = [(float(s), ", ".join(names)) for s, names in sorted(alert_steps.items())]
    if dataclasses.is_dataclass(config):
        config = dataclasses.asdict(config)
    config = config or _recorded_config(run_dir) or {}
    envs = ", ".join(e.get("name", "?") if isinstance(e, dict) else str(e) for e in config.get("envs") or []) or "?"
    title = f"Training of {config.get('model') or 'default'} on {envs} ({config.get('algo', '?')})"
    latest = rows[-1] if rows else {}
    summary = [
        ("run folder", str(run_dir)),
        ("steps logged", f"{len(rows)} (last: step {last}" + (f" of {config['steps']})" if config.get("steps") else ")")),
        ("reward (last step)", _fmt(latest.get("reward/mean"))),
        ("first step / last step reward", f"{_fmt(rows[0].get('reward/mean')) if rows else 'n/a'} / {_fmt(latest.get('reward/mean'))}"),
        ("held-out test reward (last sentinel)", _fmt(next((r["sentinel/reward_mean"] for r in reversed(rows) if "sentinel/reward_mean" in r), None))),
        ("alerts", f"{len(alerts)} on {len(alert_steps)} step(s)" if alerts else "none"),
    ]
    table = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in summary)
    config_json = _esc(json.dumps(config, indent=2, default=str))
    css = _CSS + ".ok{color:#1b7a3d}.alert td{background:#fff4f3}.sample{border-top:1px solid #eee;padding:6px 0}"
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>envhub train: {_esc(title)}</title><style>{css}</style></head><body>"
        f"<h1>{_esc(title)}</h1><p class='muted'>step {last} · written by the trainer after every step; "
        f"<code>envhub report {_esc(run_dir)}</code> rebuilds it</p>"
        f"<h2>Summary</h2><table>{table}</table>"
        f"<h2>Reward-hacking alerts</h2>{_alerts_table(alerts)}"
        f"<h2>Over the steps</h2><p class='muted'>Dashed red lines: steps where an alert fired.</p>"
        f"<div class='plots'>{''.join(_plots(rows, marks))}</div>"
        f"<h2>Samples per step</h2><p class='muted'>The best and the worst episode of each group, with the rubric's "
        f"reasons; the newest step first.</p>{_samples(steps, alert_steps)}"
        f"<h2>Configuration</h2><details><summary>run settings</summary><pre>{config_json}</pre></details>"
        "</body></html>"
    )


def write_training_report(run_dir: str | Path, *, config: Any = None) -> Path:
    """Write :func:`render_training_report`'s page to ``run_dir``/report.html (atomically)."""
    path = Path(run_dir) / TRAINING_REPORT_FILE
    write_atomic(path, render_training_report(run_dir, config=config).encode("utf-8"), mode=OUTPUT_MODE)
    return path
