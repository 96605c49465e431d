"""The evaluation loop: run episodes of an environment against a policy, concurrently, resumably.

Episode ``(task_index, sample)`` resets the environment with ``seed + task_index``, so the k samples
of a task see the same task, and two runs with the same seed and split see the same tasks (which
``envhub eval compare`` pairs). Up to ``concurrency`` episodes are in flight; each has its own
environment instance from a pool. An environment or endpoint error ends that episode with an
``error`` record; it never stops the other episodes.

A run that cannot do what was asked fails loudly, with :class:`~envhub.errors.EvalRunError`:

- before the first episode, when the environment does not resolve, its factory refuses the kwargs
  or it does not reset, and when the endpoint does not answer or does not serve the model
  (:mod:`~envhub.evaluation.preflight`); nothing is written then;
- after the last, when every episode ended in an error, or more than ``max_error_rate`` of them
  did; the results, summary and report are written first, and the message gives the error types
  and the first error.

A folder is resumed only when its recorded settings (and the environment's digest) match; the
default folder is new for every run (:func:`default_out_dir`).

    summary = evaluate("arithmetic", episodes=16, out_dir="runs/base")
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from envhub.errors import EnvhubError, EvalRunError
from envhub.evaluation.local_model import Sampling
from envhub.evaluation.policies import EndpointPolicy, Policy, make_policy
from envhub.evaluation.preflight import check_endpoint, check_environment
from envhub.evaluation.results import (
    OUTPUT_MODE,
    REPORT_FILE,
    RESULTS_FILE,
    RUN_FILE,
    SUMMARY_FILE,
    ResultsWriter,
    Summary,
    episode_key,
    read_results,
    summarise,
)
from envhub.identity.manifest import reply_stops
from envhub.runtime.env_pool import EnvPool

__all__ = ["EvalConfig", "default_out_dir", "evaluate", "run_eval"]

_log = logging.getLogger(__name__)

#: Where runs go when no output folder is named: a new folder per run under it.
DEFAULT_RUNS_DIR = Path("runs") / "eval"

#: Config fields that must not change when a run resumes (they change what an episode is). The
#: endpoint's URL may change (a restarted server on another port); the model's name may not.
_IDENTITY_FIELDS = ("env", "env_kwargs", "runtime", "model", "adapter", "split", "seed", "samples",
                    "temperature", "top_p", "max_tokens")  # fmt: skip


@dataclass
class EvalConfig:
    """One evaluation run."""

    env: str
    """Environment id or folder, as ``envhub.make`` takes it."""
    out_dir: str
    """Output folder: results.jsonl, summary.json, report.html, run.json."""
    model: str | None = None
    """Model name at the endpoint, or a local model id/folder (None: the embedded default)."""
    base_url: str | None = None
    """OpenAI-compatible API root; None evaluates a local transformers model."""
    adapter: str | None = None
    """LoRA adapter folder for the local model (the trainer's output)."""
    engine: str = "transformers"
    """What runs a local model: ``transformers`` in this process, or ``vllm`` in a server of its own."""
    episodes: int = 20
    """Episodes in all: ``episodes / samples`` tasks, ``samples`` each."""
    samples: int = 1
    """Samples per task (k of pass@k)."""
    split: str = "test"
    seed: int = 0
    concurrency: int = 8
    """Episodes in flight at once."""
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 256
    rate_limit: float | None = None
    """Most endpoint requests started per second (None: no limit)."""
    api_key_env: str | None = None
    """Variable holding the endpoint's API key (default ENVHUB_API_KEY, then OPENAI_API_KEY)."""
    runtime: str = "inprocess"
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    pass_threshold: float = 1.0
    """An episode passes (for pass@k) when its reward reaches this."""
    retry_errors: bool = False
    """On resume, run the episodes that ended in an error again."""
    overwrite: bool = False
    """Start afresh, deleting what the output folder holds."""
    max_retries: int = 4
    """Endpoint retries per request (timeouts, 429, 5xx, malformed bodies)."""
    timeout_s: float = 120.0
    """Endpoint per-request timeout."""
    report: bool = True
    """Write report.html."""
    max_error_rate: float | None = None
    """Fail the run (EvalRunError, after writing its outputs) when more than this fraction of its
    episodes ended in an error. None: fail only when every episode did."""

    @property
    def sampling(self) -> Sampling:
        return Sampling(self.temperature, self.top_p, self.max_tokens)

    def check(self) -> None:
        problems = []
        if self.episodes < 1:
            problems.append(f"episodes must be >= 1, got {self.episodes}")
        if self.samples < 1:
            problems.append(f"samples must be >= 1, got {self.samples}")
        elif self.episodes % self.samples:
            problems.append(f"episodes ({self.episodes}) must be a multiple of samples per task ({self.samples})")
        if self.concurrency < 1:
            problems.append(f"concurrency must be >= 1, got {self.concurrency}")
        if self.temperature < 0:
            problems.append(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            problems.append(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.base_url and not self.model:
            problems.append("an endpoint (--base-url) needs --model, the model name it serves")
        if self.base_url and self.adapter:
            problems.append("--adapter is for a local model; an endpoint serves adapters under their own model names")
        if self.max_error_rate is not None and not 0 <= self.max_error_rate <= 1:
            problems.append(f"max_error_rate must be in [0, 1], got {self.max_error_rate}")
        if problems:
            raise EvalRunError(self.out_dir, "; ".join(problems), hint="fix the options named above")

    def identity(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: data[k] for k in _IDENTITY_FIELDS}


def _needs_thread(env: Any, runtime: str) -> bool:
    """Whether env calls may block (a remote runtime, or a judge criterion calling an endpoint)."""
    if runtime != "inprocess":
        return True
    rubric = getattr(env, "rubric", None)
    return any(getattr(c, "kind", "") == "judge" for c in getattr(rubric, "criteria", []))


def _error_record(exc: BaseException, where: str) -> dict[str, Any]:
    out = {"type": type(exc).__name__, "message": str(exc), "where": where}
    if not isinstance(exc, EnvhubError):
        out["traceback"] = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-2000:]
    return out


class _Run:
    def __init__(self, config: EvalConfig, policy: Policy, writer: ResultsWriter, progress: Any) -> None:
        self.config = config
        self.policy = policy
        self.writer = writer
        self.progress = progress
        self.pool = EnvPool(config.env, runtime=config.runtime, kwargs=config.env_kwargs)
        self.executor = ThreadPoolExecutor(max_workers=max(1, config.concurrency), thread_name_prefix="envhub-eval")
        self.model_info = policy.describe()
        self.sampling = config.sampling.to_dict()

    @functools.cached_property
    def env_identity(self) -> dict[str, Any]:
        """Of the pool's first instance (every instance is the same version); the digest is computed once."""
        identity = self.pool.first.identity
        return {**identity.to_dict(), "ref": identity.ref}

    @functools.cached_property
    def threaded(self) -> bool:
        return _needs_thread(self.pool.first, self.config.runtime)

    async def _env_call(self, env: Any, threaded: bool, fn, *args, **kwargs):
        if not threaded:
            return fn(*args, **kwargs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, lambda: fn(*args, **kwargs))

    async def episode(self, task_index: int, sample: int) -> dict[str, Any]:
        config = self.config
        started = time.perf_counter()
        model_s = 0.0
        env_s = 0.0
        record: dict[str, Any] = {
            "key": episode_key(task_index, sample),
            "task_index": task_index,
            "sample": sample,
            "seed": config.seed + task_index,
            "split": config.split,
            "model": self.model_info,
            "sampling": self.sampling,
        }
        messages: list[dict[str, str]] = []
        step_rewards: list[float] = []
        finish_reasons: list[str | None] = []
        usage: dict[str, int] = {"prompt_tokens": 0, "completion_tokens": 0}
        terminated = truncated = False
        info: dict[str, Any] = {}
        where = "make"
        env = None
        try:
            env = self.pool.take()
            threaded = self.threaded
            record["env"] = self.env_identity
            record["rubric_hash"] = getattr(getattr(env, "rubric", None), "hash", None)
            where = "reset"
            t = time.perf_counter()
            messages, reset_info = await self._env_call(
                env, threaded, env.reset, seed=config.seed + task_index, options={"split": config.split}
            )
            env_s += time.perf_counter() - t
            record["task_id"] = reset_info.get("task_id")
            sample_seed = (config.seed * 1_000_003 + task_index * config.samples + sample) % (2**31)
            while not (terminated or truncated):
                where = "model"
                completion = await self.policy.complete(
                    messages, seed=sample_seed + len(step_rewards), stop=reply_stops(env)
                )
                model_s += completion.model_s
                finish_reasons.append(completion.finish_reason)
                for k in usage:
                    value = completion.usage.get(k)
                    if isinstance(value, int):
                        usage[k] += value
                where = "step"
                t = time.perf_counter()
                messages, reward, terminated, truncated, info = await self._env_call(
                    env, threaded, env.step, completion.text
                )
                env_s += time.perf_counter() - t
                step_rewards.append(float(reward))
            record["reward"] = sum(step_rewards)  # the return: per-step rewards plus the rubric's total
            record["rubric"] = info.get("rubric")
            record["error"] = None
        except Exception as exc:  # an episode's failure is recorded, never raised
            record["reward"] = None
            record["rubric"] = None
            record["error"] = _error_record(exc, where)
            if env is not None and where in ("reset", "step"):
                self.pool.discard(env)  # its state is unknown (a crashed server, say): use a new one
                env = None
        finally:
            if env is not None:
                self.pool.give(env)
        record.setdefault("env", {"ref": config.env})
        record.update(
            messages=messages,
            step_rewards=step_rewards,
            turns=len(step_rewards),
            terminated=bool(terminated),
            truncated=bool(truncated),
            finish_reasons=finish_reasons,
            usage=usage,
            timings={"total_s": time.perf_counter() - started, "model_s": model_s, "env_s": env_s},
        )
        return record

    async def run(self, todo: list[tuple[int, int]]) -> None:
        queue: asyncio.Queue = asyncio.Queue()
        for item in todo:
            queue.put_nowait(item)

        async def worker() -> None:
            while True:
                try:
                    task_index, sample = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                record = await self.episode(task_index, sample)
                self.writer.write(record)
                if self.progress is not None:
                    self.progress(record)

        workers = [asyncio.ensure_future(worker()) for _ in range(min(self.config.concurrency, len(todo)) or 1)]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
            await self.policy.aclose()
            self.pool.close()
            self.executor.shutdown(wait=False, cancel_futures=True)


def _planned(config: EvalConfig) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(the folder's run.json or None, the records to keep) for ``config``; writes nothing.

    Refuses a folder whose recorded settings differ from ``config`` (resuming would mix two runs).
    """
    out = Path(config.out_dir)
    run_file = out / RUN_FILE
    results = out / RESULTS_FILE
    if config.overwrite or not results.exists():
        return None, []
    if not run_file.exists():
        if results.stat().st_size:
            raise EvalRunError(str(out), f"has a {RESULTS_FILE} but no {RUN_FILE}", hint="use another --out folder")
        return None, []
    previous = json.loads(run_file.read_text())
    recorded = previous.get("config", {})
    changed = [k for k in _IDENTITY_FIELDS if recorded.get(k) != config.identity()[k]]
    if changed:
        detail = ", ".join(f"{k}: {recorded.get(k)!r} -> {config.identity()[k]!r}" for k in changed)
        raise EvalRunError(
            str(out), f"holds a run with other settings ({detail}); resuming would mix them",
            hint="use another --out folder (or leave --out out for a new one), or --overwrite to start this one afresh",
        )  # fmt: skip
    records = read_results(results)
    if config.retry_errors:
        records = [r for r in records if not r.get("error")]
    return previous, records


def _check_same_environment(out: Path, identity: dict[str, Any], records: list[dict[str, Any]]) -> None:
    """Refuse to resume episodes of another version of the environment than the one ``make`` gives now."""
    before = next((r["env"] for r in records if (r.get("env") or {}).get("digest")), None)
    if before is not None and before.get("digest") != identity.get("digest"):
        raise EvalRunError(
            str(out), f"its episodes ran on {before.get('ref')} ({before.get('digest')}), but the environment is "
            f"now {identity.get('ref')} ({identity.get('digest')}); resuming would mix them",
            hint="pin the version the folder ran (ENV@VERSION), use another --out folder, or --overwrite",
        )  # fmt: skip


def _open_folder(config: EvalConfig, records: list[dict[str, Any]]) -> Path:
    """Create the output folder, or clear it (overwrite), or drop its errored records (retry_errors)."""
    from envhub.identity.artifact import write_atomic

    out = Path(config.out_dir)
    if config.overwrite and out.exists():
        for name in (RESULTS_FILE, SUMMARY_FILE, RUN_FILE, REPORT_FILE):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    results = out / RESULTS_FILE
    on_disk = read_results(results, repair=True)  # cuts a torn last line
    if len(on_disk) != len(records):  # retry_errors left the errored ones out
        write_atomic(results, b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in records),
                     mode=OUTPUT_MODE)  # fmt: skip
    return out


def _error_rate_failure(summary: Summary, max_error_rate: float | None) -> str | None:
    """Why the run fails for its errors, or None: every episode errored, or more than the threshold."""
    n, errors = summary.episodes, summary.errors
    if not n or not errors:
        return None
    everything = errors == n
    if not everything and (max_error_rate is None or summary.error_rate <= max_error_rate):
        return None
    types = ", ".join(f"{k}: {v}" for k, v in sorted(summary.error_types.items(), key=lambda kv: -kv[1]))
    first = summary.first_error or {}
    message = (first.get("message") or "").strip().splitlines()
    head = f"every episode ({n} of {n}) ended in an error" if everything else (
        f"{errors} of {n} episodes ({summary.error_rate:.0%}) ended in an error, more than the "
        f"--max-error-rate of {max_error_rate:.0%}"
    )
    return (f"{head} ({types}); the first, episode {first.get('key')} at {first.get('where')}: "
            f"{first.get('type')}: {message[0][:300] if message else ''}")  # fmt: skip


Progress = Callable[[dict[str, Any]], None]
"""Called with each episode's record as it is written."""


def run_eval(
    config: EvalConfig,
    *,
    policy: Policy | None = None,
    progress: bool | Progress = False,
    log: Callable[[str], None] | None = None,
) -> Summary:
    """Run (or resume) ``config``; write results, summary and report; return the summary.

    ``progress``: True draws a bar that moves as each episode ends; a callable is called with each
    record instead. ``log`` gets one-line notes (resuming, nothing to run); the default logs them.
    Raises EvalRunError as the module docstring says.
    """
    say = log or _log.info
    config.check()
    previous, done = _planned(config)
    tasks = config.episodes // config.samples
    done_keys = {r["key"] for r in done}
    todo = [(t, s) for t in range(tasks) for s in range(config.samples) if episode_key(t, s) not in done_keys]
    if todo:  # before anything is written: a run that cannot start leaves no folder behind
        identity = check_environment(
            config.env, runtime=config.runtime, env_kwargs=config.env_kwargs, split=config.split, seed=config.seed,
            run_dir=config.out_dir,
        )  # fmt: skip
        _check_same_environment(Path(config.out_dir), identity, done)
        if policy is None:
            policy = make_policy(
                model=config.model,
                base_url=config.base_url,
                adapter=config.adapter,
                sampling=config.sampling,
                api_key_env=config.api_key_env,
                rate_limit=config.rate_limit,
                retry=_retry(config),
                engine=config.engine,
            )
        if isinstance(policy, EndpointPolicy):
            check_endpoint(policy.base_url, policy.model, api_key=policy.api_key, run_dir=config.out_dir)
    out = _open_folder(config, done)
    from envhub.identity.artifact import write_atomic

    already = sum(_in_plan(r, tasks, config.samples) for r in done)
    started = time.perf_counter()
    if todo:
        if already:
            say(f"resuming {out}: running {len(todo)} of {already + len(todo)} episodes ({already} already done)")
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        run_info = {"config": asdict(config), "started": (previous or {}).get("started", now), "env": identity,
                    "model": policy.describe()}  # fmt: skip
        if previous is not None:
            run_info["resumed"] = [*previous.get("resumed", []), now]
        write_atomic(out / RUN_FILE, json.dumps(run_info, indent=2, default=str).encode(), mode=OUTPUT_MODE)
        writer = ResultsWriter(out / RESULTS_FILE)
        try:
            if progress is True:
                _run_with_progress(config, policy, writer, todo, already)
            else:
                asyncio.run(_Run(config, policy, writer, progress or None).run(todo))
        finally:
            writer.close()
    else:
        say(f"{out} already holds all {already} episodes: nothing to run")
    wall = time.perf_counter() - started
    records = [r for r in read_results(out / RESULTS_FILE) if _in_plan(r, tasks, config.samples)]
    summary = summarise(records, pass_threshold=config.pass_threshold, wall_s=wall if todo else None, ran=len(todo))
    summary.out_dir = str(out)
    write_atomic(out / SUMMARY_FILE, json.dumps(summary.to_dict(), indent=2, default=str).encode(), mode=OUTPUT_MODE)
    if config.report:
        from envhub.evaluation.report import write_report

        write_report(out, summary, records, config=asdict(config))
    failure = _error_rate_failure(summary, config.max_error_rate)
    if failure:
        raise EvalRunError(
            str(out), failure,
            hint=f"every episode's error is in {out / RESULTS_FILE}; fix the cause, then rerun with "
            f"--out {out} --retry-errors",
        )  # fmt: skip
    return summary


def _in_plan(record: dict[str, Any], tasks: int, samples: int) -> bool:
    return record["task_index"] < tasks and record["sample"] < samples


def _retry(config: EvalConfig):
    from envhub.http.chat import RetryPolicy

    return RetryPolicy(max_retries=config.max_retries, timeout_s=config.timeout_s)


def _run_with_progress(config: EvalConfig, policy: Policy, writer: ResultsWriter, todo, already: int) -> None:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), transient=False,
    ) as bar:  # fmt: skip
        task = bar.add_task(f"eval {config.env}", total=already + len(todo), completed=already)
        errors = 0

        def advance(record: dict[str, Any]) -> None:
            nonlocal errors
            errors += bool(record.get("error"))
            note = f" [red]({errors} errored)[/]" if errors else ""
            bar.update(task, advance=1, description=f"eval {config.env}{note}")

        asyncio.run(_Run(config, policy, writer, advance).run(todo))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def default_out_dir(env: str, *, model: str | None = None, adapter: str | None = None, root: Path = DEFAULT_RUNS_DIR) -> Path:
    """A new folder for a run that names none: ``runs/eval/ENV-MODEL[-ADAPTER]-YYYYmmdd-HHMMSS``.

    New for every run, so that two runs never share (or "resume") one folder by accident; to resume
    a run, pass its folder.
    """
    name = _slug(Path(env).name if Path(env).is_dir() else env.replace("/", "_"))
    who = _slug(Path(model).name if model and Path(model).is_dir() else (model or "default"))
    if adapter:
        who += "+" + _slug(Path(adapter).parent.name if Path(adapter).name == "adapter" else Path(adapter).name)
    base = root / f"{name}-{who}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidate, n = base, 1
    while candidate.exists():  # two runs in the same second
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def evaluate(
    env_id: str,
    *,
    model: str | None = None,
    adapter: str | None = None,
    base_url: str | None = None,
    episodes: int = 16,
    samples: int = 1,
    split: str = "test",
    seed: int = 0,
    out_dir: str | Path | None = None,
    concurrency: int = 64,
    temperature: float = 0.0,
    max_tokens: int = 64,
    progress: bool | Progress = False,
    **options: Any,
) -> Summary:
    """Evaluate a model on an environment and write the output folder; returns the :class:`Summary`.

    Defaults suit a quick CPU demo with the embedded 135M model: greedy decoding, short answers, and
    up to 64 episodes of a turn generated as one batch. ``out_dir`` None is a new folder under
    runs/eval (:func:`default_out_dir`); an existing folder of the same settings is resumed.
    ``options`` are further :class:`EvalConfig` fields. Raises EvalRunError as :func:`run_eval` does.
    """
    if out_dir is None:
        out_dir = default_out_dir(env_id, model=model, adapter=adapter)
    config = EvalConfig(
        env=env_id,
        out_dir=str(out_dir),
        model=model,
        adapter=adapter,
        base_url=base_url,
        episodes=episodes,
        samples=samples,
        split=split,
        seed=seed,
        concurrency=concurrency,
        temperature=temperature,
        max_tokens=max_tokens,
        **options,
    )
    return run_eval(config, progress=progress)
