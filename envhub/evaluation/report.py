"""``report.html``, the terminal tables, and the page of ``envhub eval compare``.

The report is one self-contained page: inline CSS, plots drawn as inline SVG here (reward
distribution, per-criterion mean scores with their intervals, turns per episode), the summary, and
the episodes' transcripts in collapsible blocks. It loads nothing from the network.
"""

from __future__ import annotations

import html
import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from envhub.evaluation.results import OUTPUT_MODE, REPORT_FILE, Summary

_W, _H = 420, 220  # plot size in px
_PAD_L, _PAD_B, _PAD_T, _PAD_R = 44, 34, 14, 10
_BAR = "#3b6fb6"
_SMALL = ' font-size="10" fill="#555"'
_MAX_EPISODES_SHOWN = 200


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _tick(value: float, y_max: float) -> str:
    return f"{value:.2f}" if y_max <= 1.0 else f"{value:.0f}"


def _axes(title: str, y_max: float, y_label: str, *, tick: Callable[[float, float], str] = _tick) -> list[str]:
    """SVG opening, title, y axis with 4 ticks (each labelled ``tick(value, y_max)``); returns parts to extend."""
    plot_h = _H - _PAD_B - _PAD_T
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H + 20}" role="img" aria-label="{_esc(title)}">',
        f'<text x="{_W / 2}" y="12" text-anchor="middle" font-size="13" font-weight="600">{_esc(title)}</text>',
    ]
    for i in range(5):
        value = y_max * i / 4
        y = _PAD_T + 6 + plot_h - plot_h * i / 4
        parts.append(f'<line x1="{_PAD_L}" x2="{_W - _PAD_R}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e6e6e6"/>')
        parts.append(f'<text x="{_PAD_L - 4}" y="{y + 4:.1f}" text-anchor="end"{_SMALL}>{tick(value, y_max)}</text>')
    parts.append(
        f'<text x="10" y="{_PAD_T + 6 + plot_h / 2}" transform="rotate(-90 10 {_PAD_T + 6 + plot_h / 2})" '
        f'text-anchor="middle"{_SMALL}>{_esc(y_label)}</text>'
    )
    return parts


def svg_bars(
    title: str,
    labels: Sequence[str],
    values: Sequence[float],
    *,
    y_max: float | None = None,
    y_label: str = "",
    errors: Sequence[tuple[float, float] | None] | None = None,
) -> str:
    """A bar chart as an SVG string (optionally with error bars given as (low, high))."""
    n = max(len(values), 1)
    finite = [v for v in values if not math.isnan(v)]
    top = y_max if y_max is not None else max([*finite, 1e-9])
    if top <= 0:
        top = 1.0
    if y_max is None and top > 1:  # counts: a top that 4 divides, so that every tick is a whole number
        top = 4 * math.ceil(top * 1.05 / 4)
    plot_w = _W - _PAD_L - _PAD_R
    plot_h = _H - _PAD_B - _PAD_T
    base_y = _PAD_T + 6 + plot_h
    slot = plot_w / n
    parts = _axes(title, top, y_label)
    for i, (label, value) in enumerate(zip(labels, values)):
        x = _PAD_L + i * slot + slot * 0.12
        width = slot * 0.76
        v = 0.0 if math.isnan(value) else value
        h = plot_h * min(v / top, 1.0)
        parts.append(
            f'<rect x="{x:.1f}" y="{base_y - h:.1f}" width="{width:.1f}" height="{h:.1f}" fill="{_BAR}">'
            f"<title>{_esc(label)}: {_fmt(value)}</title></rect>"
        )
        if errors and errors[i] is not None:
            lo, hi = errors[i]
            if not (math.isnan(lo) or math.isnan(hi)):
                cx = x + width / 2
                y_lo = base_y - plot_h * min(max(lo, 0) / top, 1.0)
                y_hi = base_y - plot_h * min(max(hi, 0) / top, 1.0)
                parts.append(
                    f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{y_lo:.1f}" y2="{y_hi:.1f}" stroke="#222" stroke-width="2"/>'
                )
        if n <= 16 or i % math.ceil(n / 16) == 0:
            short = label if len(label) <= 14 else label[:13] + "…"
            parts.append(
                f'<text x="{x + width / 2:.1f}" y="{base_y + 14}" text-anchor="middle"{_SMALL}>{_esc(short)}</text>'
            )
    parts.append(f'<line x1="{_PAD_L}" x2="{_W - _PAD_R}" y1="{base_y}" y2="{base_y}" stroke="#888"/>')
    parts.append("</svg>")
    return "".join(parts)


def reward_histogram(rewards: Sequence[float], bins: int = 10) -> tuple[list[str], list[float]]:
    """(labels, counts). Rewards in [0, 1] go to ``bins + 1`` bins centred on 0, 1/bins, ..., 1, each
    labelled by its centre, so that 0.9 and 1.0 (a near miss and a full score) are told apart;
    rewards outside [0, 1] get ``bins`` equal bins from the lowest to the highest, labelled by range."""
    low, high = min(rewards, default=0.0), max(rewards, default=1.0)
    if low >= 0.0 and high <= 1.0:
        counts = [0] * (bins + 1)
        for r in rewards:
            counts[math.floor(r * bins + 0.5)] += 1
        return [f"{i / bins:.1f}" for i in range(bins + 1)], [float(c) for c in counts]
    width = (high - low) / bins or 1.0
    counts = [0] * bins
    for r in rewards:
        counts[min(int((r - low) / width), bins - 1)] += 1
    labels = [f"{low + i * width:.2g}–{low + (i + 1) * width:.2g}" for i in range(bins)]
    return labels, [float(c) for c in counts]


def _interval(e: dict[str, Any]) -> str:
    """"(95% CI a to b, method)" of a summary estimate."""
    ci = e.get("ci95") or [None, None]
    method = {"wilson": "Wilson", "bootstrap": "bootstrap", "t": "t"}.get(e.get("interval", "t"), "t")
    return f"95% CI {_fmt(ci[0])} to {_fmt(ci[1])}, {method}"


def _training_run(run: dict[str, Any]) -> str:
    """One line about an adapter's training run, from what its provenance.json gave."""
    parts = [run.get("algo"), "on " + ", ".join(run["environments"]) if run.get("environments") else None,
             f"{run['steps']} steps" if run.get("steps") is not None else None]  # fmt: skip
    where = run.get("output_dir") or run.get("provenance")
    return " ".join(p for p in parts if p) + (f" ({where})" if where else "")


def _summary_rows(summary: Summary) -> list[tuple[str, str]]:
    r = summary.reward
    rows = [
        ("environment", summary.env),
        ("env digest", summary.env_digest or "n/a"),
        ("rubric hash", ", ".join(summary.rubric_hashes) or "n/a"),
        ("model", summary.model),
    ]
    if summary.adapter:
        rows.append(("adapter", str(summary.adapter.get("path"))))
        if summary.adapter.get("training_run"):
            rows.append(("trained by", _training_run(summary.adapter["training_run"])))
    rows += [
        ("episodes", f"{summary.episodes} ({summary.tasks} tasks x {summary.samples_per_task} samples)"),
        ("reward mean", f"{_fmt(r.get('mean'))}  ({_interval(r)}; std {_fmt(r.get('std'))})"),
    ]
    if summary.pass_rate.get("n"):
        rows.append((f"pass rate (reward >= {summary.pass_threshold:g})",
                     f"{_fmt(summary.pass_rate.get('mean'))}  ({_interval(summary.pass_rate)})"))  # fmt: skip
    for k, v in summary.pass_at_k.items():
        rows.append((f"{k} (reward >= {summary.pass_threshold:g})", _fmt(v)))
    rows += [
        ("turns mean", f"{_fmt(summary.turns.get('mean'), 2)} (max {summary.turns.get('max')})"),
        ("truncation rate", _fmt(summary.truncation_rate)),
        ("error rate", f"{_fmt(summary.error_rate)} ({summary.errors} episodes)"),
    ]
    if summary.error_types:
        rows.append(("error types", ", ".join(f"{k}: {v}" for k, v in summary.error_types.items())))
    if summary.first_error:
        first = summary.first_error
        rows.append(("first error", f"episode {first.get('key')} ({first.get('where')}): {first.get('type')}: {first.get('message')}"))
    if summary.timing.get("episodes_per_s") is not None:
        rows.append(("throughput", f"{_fmt(summary.timing['episodes_per_s'], 2)} episodes/s"))
    return rows


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:24px auto;max-width:1100px;color:#222;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
table{border-collapse:collapse}td,th{padding:3px 10px;border-bottom:1px solid #e3e3e3;text-align:left;vertical-align:top}
th{background:#f5f5f5}.plots{display:flex;flex-wrap:wrap;gap:12px}
svg{background:#fcfcfc;border:1px solid #e6e6e6;border-radius:4px}
details{border:1px solid #e6e6e6;border-radius:4px;margin:4px 0;padding:4px 8px}summary{cursor:pointer}
.msg{white-space:pre-wrap;font:12px/1.4 ui-monospace,Menlo,monospace;margin:4px 0;padding:4px 6px;border-left:3px solid #ccc}
.system{border-color:#999}.user{border-color:#3b6fb6}.assistant{border-color:#2e8b57}.tool{border-color:#b8860b}
.err{color:#b00020}.muted{color:#777}
"""


def render_report(summary: Summary, records: Sequence[dict[str, Any]], *, config: dict[str, Any] | None = None) -> str:
    """The report page as a string."""
    ok = [r for r in records if not r.get("error")]
    rewards = [float(r["reward"]) for r in ok]
    labels, counts = reward_histogram(rewards)
    plots = [svg_bars("Reward distribution", labels, counts, y_label="episodes")]
    names = list(summary.criteria)
    if names:
        means = [summary.criteria[n].get("mean") for n in names]
        means = [float("nan") if m is None else float(m) for m in means]
        cis = [tuple(summary.criteria[n].get("ci95") or (float("nan"), float("nan"))) for n in names]
        cis = [tuple(float("nan") if x is None else x for x in c) for c in cis]
        plots.append(svg_bars("Mean score per criterion (95% CI)", names, means, y_max=1.0, y_label="score", errors=cis))
    turn_counts = Counter(int(r.get("turns", 0)) for r in ok)
    if turn_counts:
        turns = list(range(1, max(turn_counts) + 1))
        plots.append(svg_bars("Turns per episode", [str(t) for t in turns], [float(turn_counts.get(t, 0)) for t in turns], y_label="episodes"))
    rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in _summary_rows(summary))
    crit_rows = "".join(
        f"<tr><td>{_esc(n)}</td><td>{_fmt(c.get('weight'), 2)}</td><td>{_fmt(c.get('mean'))}</td>"
        f"<td>{_fmt((c.get('ci95') or [None])[0])} to {_fmt((c.get('ci95') or [None, None])[1])}</td>"
        f"<td>{c.get('unscored', 0)}</td></tr>"
        for n, c in summary.criteria.items()
    )
    episodes = []
    for r in sorted(records, key=lambda r: (r["task_index"], r["sample"]))[:_MAX_EPISODES_SHOWN]:
        head = f"task {r['task_index']} sample {r['sample']} · {_esc(r.get('task_id') or '')} · "
        if r.get("error"):
            head += f"<span class='err'>error: {_esc(r['error'].get('type'))}</span>"
        else:
            head += f"reward {_fmt(r.get('reward'))} · {r.get('turns')} turn(s)"
        body = "".join(
            f"<div class='msg {_esc(m.get('role'))}'><b>{_esc(m.get('role'))}</b>\n{_esc(m.get('content'))}</div>"
            for m in r.get("messages") or []
        )
        crit = ((r.get("rubric") or {}).get("criteria")) or {}
        if crit:
            body += "<table>" + "".join(
                f"<tr><td>{_esc(n)}</td><td>{_fmt(c.get('score'))}</td><td>{_esc(c.get('reason') or '')}</td></tr>"
                for n, c in crit.items()
            ) + "</table>"
        if r.get("error"):
            body += f"<div class='msg err'>{_esc(r['error'].get('message'))}</div>"
        episodes.append(f"<details><summary>{head}</summary>{body}</details>")
    more = len(records) - _MAX_EPISODES_SHOWN
    if more > 0:
        episodes.append(f"<p class='muted'>{more} more episodes in results.jsonl</p>")
    config_json = _esc(json.dumps(config or {}, indent=2, default=str))
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>envhub eval: {_esc(summary.env)} · {_esc(summary.model_label)}</title><style>{_CSS}</style></head><body>"
        f"<h1>Evaluation of {_esc(summary.model_label)} on {_esc(summary.env)}</h1>"
        f"<p class='muted'>{summary.episodes} episodes · reward {_fmt(summary.reward.get('mean'))}</p>"
        f"<h2>Summary</h2><table>{rows}</table>"
        f"<h2>Plots</h2><div class='plots'>{''.join(plots)}</div>"
        "<h2>Criteria</h2><table><tr><th>criterion</th><th>weight</th><th>mean</th><th>95% CI</th><th>unscored</th></tr>"
        f"{crit_rows}</table>"
        f"<h2>Episodes</h2>{''.join(episodes)}"
        f"<h2>Configuration</h2><details><summary>run settings</summary><pre>{config_json}</pre></details>"
        "</body></html>"
    )


def write_report(out_dir: str | Path, summary: Summary, records: Sequence[dict[str, Any]], *, config: dict | None = None) -> Path:
    from envhub.identity.artifact import write_atomic

    path = Path(out_dir) / REPORT_FILE
    write_atomic(path, render_report(summary, records, config=config).encode("utf-8"), mode=OUTPUT_MODE)
    return path


# --- terminal ------------------------------------------------------------------------------------


def summary_table(summary: Summary):
    """A rich Table of the summary."""
    from rich.table import Table

    table = Table(title=f"{summary.env} · {summary.model_label}", show_header=False, title_justify="left")
    table.add_column("metric", style="bold")
    table.add_column("value")
    for k, v in _summary_rows(summary):
        table.add_row(k, v)
    for name, c in summary.criteria.items():
        ci = c.get("ci95") or [None, None]
        table.add_row(f"  {name} (w={_fmt(c.get('weight'), 2)})", f"{_fmt(c.get('mean'))} ({_fmt(ci[0])} to {_fmt(ci[1])})"
                      + (f", {c['unscored']} unscored" if c.get("unscored") else ""))
    return table


# --- comparison page -----------------------------------------------------------------------------

_VERDICT_CLASS = {"better": "good", "worse": "err", "changed": "warn"}


def render_comparison(comparison: Any) -> str:
    """The page of ``envhub eval compare``: both runs named, every metric with its direction and verdict."""
    from envhub.evaluation.compare import COLUMNS, comparison_rows

    a, b = comparison.summary_a, comparison.summary_b
    runs = "".join(
        f"<tr><th>{side}</th><td>{_esc(path)}</td><td>{_esc(s.model_label)}</td><td>{_esc(s.env)}</td>"
        f"<td>{s.episodes}</td><td>{_fmt(s.error_rate)}</td></tr>"
        for side, path, s in (("A", comparison.run_a, a), ("B", comparison.run_b, b))
    )
    head = "".join(f"<th>{_esc(c)}</th>" for c in COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{_esc(cell)}</td>" for cell in row[:-1])
        + f"<td class='{_VERDICT_CLASS.get(row[-1], 'muted')}'>{_esc(row[-1])}</td></tr>"
        for row in comparison_rows(comparison)
    )
    interval = "paired by task" if comparison.same_tasks else "unpaired (Welch): the runs scored different tasks"
    notes = "".join(f"<li>{_esc(w)}</li>" for w in comparison.warnings)
    title = f"{a.model_label} vs {b.model_label} on {b.env}"
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>envhub eval compare: {_esc(title)}</title><style>{_CSS}.good{{color:#1b7a3d}}.warn{{color:#a86b00}}"
        "</style></head><body>"
        f"<h1>Comparison: {_esc(title)}</h1>"
        f"<p class='muted'>B - A per metric, 95% intervals {_esc(interval)}. A verdict is better or worse only "
        "when the interval excludes zero; rows with no data on a side say so.</p>"
        "<h2>Runs</h2><table><tr><th>run</th><th>folder</th><th>model</th><th>environment</th><th>episodes</th>"
        f"<th>error rate</th></tr>{runs}</table>"
        f"<h2>Metrics</h2><table><tr>{head}</tr>{body}</table>"
        + (f"<h2>Notes</h2><ul>{notes}</ul>" if notes else "")
        + "</body></html>"
    )


def write_comparison(path: str | Path, comparison: Any) -> Path:
    """Write :func:`render_comparison`'s page to ``path`` (readable by everyone, like the reports)."""
    from envhub.identity.artifact import write_atomic

    path = Path(path)
    write_atomic(path, render_comparison(comparison).encode("utf-8"), mode=OUTPUT_MODE)
    return path
