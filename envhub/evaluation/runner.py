"""The evaluation loop: run episodes of an environment against a policy, concurrently, resumably.

Episode ``(task_index, sample)`` resets the environment with ``seed + task_index``, so the k samples
of a task see the same task, and two runs with the same seed and split see the same tasks (which
``envhub eval compare`` pairs). Up to ``concurrency`` episodes are in flight; each has its own
environment instance from a pool. An environment or endpoint error ends that episode with an
``error`` record; it never stops the run.

    summary = evaluate("arithmetic", episodes=16, out_dir="runs/base")
"""

from __future__ import annotations

import asyncio
import json
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from envhub.errors import EnvhubError, EvalRunError
from envhub.evaluation.local_model import Sampling
from envhub.evaluation.policies import Policy, make_policy
from envhub.evaluation.results import (
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

__all__ = ["EvalConfig", "evaluate", "run_eval"]

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
        if problems:
            raise EvalRunError(self.out_dir, "; ".join(problems), hint="fix the options named above")

    def identity(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: data[k] for k in _IDENTITY_FIELDS}


class _EnvPool:
    """Environment instances, one per episode in flight, reused across episodes."""

    def __init__(self, config: EvalConfig) -> None:
        self.config = config
        self.free: list[Any] = []
        self.all: list[Any] = []
        self.identity: Any = None  # of the first instance: every instance is the same version
        self.threaded = False

    def take(self) -> Any:
        if self.free:
            return self.free.pop()
        from envhub.runtime.make import make

        env = make(self.config.env, runtime=self.config.runtime, **self.config.env_kwargs)
        if self.identity is None:
            self.identity = env.identity.to_dict()  # computes the digest once, not per instance
            self.identity["ref"] = env.identity.ref
            self.threaded = _needs_thread(env, self.config.runtime)
        self.all.append(env)
        return env

    def give(self, env: Any) -> None:
        self.free.append(env)

    def discard(self, env: Any) -> None:
        self.all.remove(env)
        try:
            env.close()
        except Exception:
            pass

    def close(self) -> None:
        for env in self.all:
            try:
                env.close()
            except Exception:
                pass


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
        self.pool = _EnvPool(config)
        self.executor = ThreadPoolExecutor(max_workers=max(1, config.concurrency), thread_name_prefix="envhub-eval")
        self.model_info = policy.describe()
        self.sampling = config.sampling.to_dict()

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
            threaded = self.pool.threaded
            record["env"] = self.pool.identity
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
                completion = await self.policy.complete(messages, seed=sample_seed + len(step_rewards))
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
                    self.progress()

        workers = [asyncio.ensure_future(worker()) for _ in range(min(self.config.concurrency, len(todo)) or 1)]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
            await self.policy.aclose()
            self.pool.close()
            self.executor.shutdown(wait=False, cancel_futures=True)


def _prepare(config: EvalConfig) -> tuple[Path, list[dict[str, Any]]]:
    """Create or reopen the output folder; return it and the records it already holds."""
    out = Path(config.out_dir)
    if config.overwrite and out.exists():
        for name in (RESULTS_FILE, SUMMARY_FILE, RUN_FILE, REPORT_FILE):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    run_file = out / RUN_FILE
    results = out / RESULTS_FILE
    if results.exists() and run_file.exists():
        previous = json.loads(run_file.read_text()).get("config", {})
        changed = [k for k in _IDENTITY_FIELDS if previous.get(k) != config.identity()[k]]
        if changed:
            detail = ", ".join(f"{k}: {previous.get(k)!r} -> {config.identity()[k]!r}" for k in changed)
            raise EvalRunError(
                str(out), f"holds a run with other settings ({detail}); resuming would mix them",
                hint="use another --out folder, or --overwrite to start this one afresh",
            )
    elif results.exists() and results.stat().st_size:
        raise EvalRunError(str(out), f"has a {RESULTS_FILE} but no {RUN_FILE}", hint="use another --out folder")
    records = read_results(results, repair=True)
    if config.retry_errors and any(r.get("error") for r in records):
        kept = [r for r in records if not r.get("error")]
        from envhub.identity.artifact import write_atomic

        write_atomic(results, b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in kept))
        records = kept
    return out, records


def run_eval(config: EvalConfig, *, policy: Policy | None = None, progress: bool = False) -> Summary:
    """Run (or resume) ``config``; write results, summary and report; return the summary."""
    config.check()
    out, done = _prepare(config)
    tasks = config.episodes // config.samples
    done_keys = {r["key"] for r in done}
    todo = [(t, s) for t in range(tasks) for s in range(config.samples) if episode_key(t, s) not in done_keys]
    run_info = {"config": asdict(config), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    from envhub.identity.artifact import write_atomic

    started = time.perf_counter()
    if todo:
        if policy is None:
            policy = make_policy(
                model=config.model,
                base_url=config.base_url,
                adapter=config.adapter,
                sampling=config.sampling,
                api_key_env=config.api_key_env,
                rate_limit=config.rate_limit,
                retry=_retry(config),
            )
        run_info["model"] = policy.describe()
        write_atomic(out / RUN_FILE, json.dumps(run_info, indent=2, default=str).encode())
        writer = ResultsWriter(out / RESULTS_FILE)
        try:
            if progress:
                _run_with_progress(config, policy, writer, todo, len(done_keys))
            else:
                asyncio.run(_Run(config, policy, writer, None).run(todo))
        finally:
            writer.close()
    wall = time.perf_counter() - started
    records = [r for r in read_results(out / RESULTS_FILE) if _in_plan(r, tasks, config.samples)]
    summary = summarise(records, pass_threshold=config.pass_threshold, wall_s=wall if todo else None, ran=len(todo))
    summary.out_dir = str(out)
    write_atomic(out / SUMMARY_FILE, json.dumps(summary.to_dict(), indent=2, default=str).encode())
    if config.report:
        from envhub.evaluation.report import write_report

        write_report(out, summary, records, config=asdict(config))
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
    )

    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=False
    ) as bar:
        task = bar.add_task(f"eval {config.env}", total=already + len(todo), completed=already)
        asyncio.run(_Run(config, policy, writer, lambda: bar.advance(task)).run(todo))


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
    out_dir: str | Path = "eval-out",
    concurrency: int = 64,
    temperature: float = 0.0,
    max_tokens: int = 64,
    progress: bool = False,
    **options: Any,
) -> Summary:
    """Evaluate a model on an environment and write the output folder; returns the :class:`Summary`.

    Defaults suit a quick CPU demo with the embedded 135M model: greedy decoding, short answers, and
    up to 64 episodes of a turn generated as one batch. ``options`` are further :class:`EvalConfig`
    fields.
    """
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
