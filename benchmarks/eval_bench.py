"""Evaluation harness throughput: envhub's `eval` runner against verifiers' evaluator.

Both harnesses run the same environment logic (the bundled arithmetic environment: its tasks, system
prompt and its two checks, exact answer 0.8 and answer format 0.2) against the same local
OpenAI-compatible endpoint: a scripted server (envhub.evaluation.model_server.scripted) in its own process that
solves each problem, with an optional fixed latency standing in for a model. Each measurement runs
in a fresh process, so its CPU time is the harness's alone (the endpoint's CPU is in another process).

Reported per harness and concurrency (1, 8, 64):
- episodes/s (wall clock, one step per episode);
- endpoint time per request: time spent inside the server's handler, summed over requests;
- harness CPU per step: the harness process's user+system CPU time over the number of steps
  (model client, HTTP client, environment, scoring, bookkeeping, result writing), and the same less
  the environment's own code (reset, step, rubric: measured alone on the same episodes), which
  envhub runs per episode while verifiers builds its dataset before the clock starts;
- at concurrency 1, client-side overhead per step: wall time per step minus endpoint time per step
  (harness CPU plus loopback HTTP latency).

    python benchmarks/eval_bench.py --vf-python /tmp/vf01/bin/python --out benchmarks/eval.json

verifiers is measured through its Python API; `--vf-python` names an interpreter where it is
installed (a virtual environment with --system-site-packages, so that envhub's tasks can be read there,
keeps its dependencies away from ours). verifiers 0.1: `Environment.evaluate` (what `vf-eval` calls)
on a `SingleTurnEnv` of the same tasks and reward functions. verifiers 0.4 (`verifiers.v1`): a
`Taskset` of the same tasks whose `Task` has the same checks as weighted `@vf.reward` functions,
played by `SingleAgentEnv` with the tool-less chat harness (`null`) in the local `subprocess` runtime
(`Env.run_slot` under one semaphore, as its eval runner does); its harness runs each episode's
conversation in a program of its own (a PEP 723 script prepared with `uv`, which must be on PATH),
whose CPU time is counted with the harness's; one warm-up episode, which prepares that program, runs
before the clock starts.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "environments" / "arithmetic"))


def _tasks(n: int) -> list[dict]:
    """The first n test tasks, as envhub's runner sees them (reset with seed i)."""
    import envhub

    env = envhub.make("arithmetic")
    tasks = []
    for i in range(n):
        messages, _ = env.reset(seed=i, options={"split": "test"})
        tasks.append({"prompt": messages, "answer": str(env.episode.task["answer"])})
    return tasks


def _cpu_s() -> float:
    """CPU seconds of this process and the children it waited for: verifiers 0.4 runs each episode's
    model conversation in a program of its own (its harness); envhub starts none."""
    self, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return self.ru_utime + self.ru_stime + children.ru_utime + children.ru_stime


# --- the two harnesses, each run in its own process ----------------------------------------------


def run_envhub(base_url: str, episodes: int, concurrency: int) -> dict:
    import httpx

    import envhub
    from envhub.evaluation.runner import EvalConfig, run_eval

    httpx.AsyncClient()  # imports done before the clock starts, as for verifiers
    envhub.make("arithmetic")
    out = tempfile.mkdtemp(prefix="envhub-eval-bench-")
    config = EvalConfig(env="arithmetic", out_dir=out, base_url=base_url, model="scripted", episodes=episodes,
                        concurrency=concurrency, temperature=0.0, max_tokens=64, report=False)  # fmt: skip
    cpu, wall = _cpu_s(), time.perf_counter()
    summary = run_eval(config)
    wall, cpu = time.perf_counter() - wall, _cpu_s() - cpu
    assert summary.errors == 0, summary.error_types
    return {"wall_s": wall, "cpu_s": cpu, "episodes": summary.episodes, "steps": summary.episodes,
            "reward": summary.reward["mean"], "env_code_cpu_s": _env_code_cpu(episodes)}  # fmt: skip


def _env_code_cpu(episodes: int) -> float:
    """CPU seconds the environment's own code takes for ``episodes`` episodes (reset, step with the
    right answer, rubric), measured alone: what the envhub run spends outside its harness."""
    import envhub

    env = envhub.make("arithmetic")
    cpu = _cpu_s()
    for i in range(episodes):
        env.reset(seed=i, options={"split": "test"})
        env.step(f"<answer>{env.episode.task['answer']}</answer>")
    return _cpu_s() - cpu


def _correct(text: str, answer: str) -> float:
    """The arithmetic environment's exact-answer check, as a verifiers reward function sees it."""
    from arithmetic_env import extract_answer

    found = extract_answer(text or "")
    try:
        return float(found is not None and int(found.replace(",", "").strip()) == int(answer))
    except ValueError:
        return 0.0


def _answer_format(text: str) -> float:
    import re

    from arithmetic_env import ANSWER_TAG

    tags = ANSWER_TAG.findall(text or "")
    return float(len(tags) == 1 and re.fullmatch(r"-?\d+", tags[0]) is not None)


def run_verifiers(base_url: str, episodes: int, concurrency: int) -> dict:
    import verifiers

    if int(verifiers.__version__.split(".")[0]) == 0 and int(verifiers.__version__.split(".")[1]) >= 4:
        return run_verifiers_v1(base_url, episodes, concurrency)
    return run_verifiers_01(base_url, episodes, concurrency)


def run_verifiers_v1(base_url: str, episodes: int, concurrency: int) -> dict:
    """verifiers 0.4: a Taskset of the same tasks whose Task has the same two checks as weighted
    rewards, played by its `SingleAgentEnv` with the tool-less chat harness (`null`) in the local
    `subprocess` runtime, as `prime eval` / `vf eval` runs it (``run_slot`` under one semaphore)."""
    import asyncio
    import logging
    import types

    import verifiers.v1 as vf
    from verifiers.v1.env import RunSlot

    logging.disable(logging.WARNING)
    rows = _tasks(episodes)

    class Data(vf.TaskData):
        answer: str

    class ArithmeticTask(vf.Task[Data, vf.State, vf.TaskConfig]):
        @vf.reward(weight=0.8)
        async def correct(self, task: Data, trace: vf.Trace) -> float:
            return _correct(trace.last_reply, task.answer)

        @vf.reward(weight=0.2)
        async def answer_format(self, trace: vf.Trace) -> float:
            return _answer_format(trace.last_reply)

    class ArithmeticTaskset(vf.Taskset[ArithmeticTask, vf.TasksetConfig]):
        def load(self):
            for r in rows:
                system, prompt = r["prompt"][0]["content"], r["prompt"][1]["content"]
                yield ArithmeticTask(Data(prompt=prompt, system_prompt=system, answer=r["answer"]))

    module = types.ModuleType("envhub_bench_arithmetic")  # verifiers finds a taskset by module name
    module.ArithmeticTaskset, module.__all__ = ArithmeticTaskset, ["ArithmeticTaskset"]
    sys.modules[module.__name__] = module
    os.environ["VF_BENCH_API_KEY"] = "unused"
    config = vf.SingleAgentEnvConfig(taskset={"id": module.__name__}, agent={"harness": {"id": "null"}, "runtime": {"type": "subprocess"}})
    env = vf.SingleAgentEnv(config)
    ctx = vf.ModelContext(client=vf.EvalClientConfig(base_url=base_url, api_key_var="VF_BENCH_API_KEY"), model="scripted",
                          sampling=vf.SamplingConfig(temperature=0.0, max_tokens=64))  # fmt: skip
    tasks = list(env.taskset)

    async def evaluate() -> tuple[list, float, float]:
        semaphore = asyncio.Semaphore(concurrency)
        async with env.serving():
            await env.run_slot(RunSlot(tasks[0]), ctx, semaphore)  # the harness's program prepared before the clock
            cpu, wall = _cpu_s(), time.perf_counter()
            done = await asyncio.gather(*(env.run_slot(RunSlot(task), ctx, semaphore) for task in tasks))
            return done, time.perf_counter() - wall, _cpu_s() - cpu

    done, wall, cpu = asyncio.run(evaluate())
    failed = [e for e in done if not e.ok]
    assert not failed, [t.errors[-1].message for e in failed[:3] for t in e.traces if t.errors]
    rewards = [e.traces[0].reward for e in done]
    return {"wall_s": wall, "cpu_s": cpu, "episodes": len(rewards), "steps": len(rewards), "reward": sum(rewards) / len(rewards),
            "warmup_requests": 1}  # fmt: skip


def run_verifiers_01(base_url: str, episodes: int, concurrency: int) -> dict:
    import logging

    import verifiers as vf
    from datasets import Dataset
    from verifiers.types import ClientConfig

    logging.disable(logging.WARNING)
    rows = _tasks(episodes)

    def correct(completion, answer, **kwargs) -> float:
        return _correct(completion[-1]["content"] if isinstance(completion, list) else completion, answer)

    def answer_format(completion, **kwargs) -> float:
        return _answer_format(completion[-1]["content"] if isinstance(completion, list) else completion)

    dataset = Dataset.from_list([{"prompt": r["prompt"], "answer": r["answer"]} for r in rows])
    env = vf.SingleTurnEnv(eval_dataset=dataset, rubric=vf.Rubric(funcs=[correct, answer_format], weights=[0.8, 0.2]))
    os.environ["VF_BENCH_API_KEY"] = "unused"
    client = ClientConfig(api_base_url=base_url, api_key_var="VF_BENCH_API_KEY", max_retries=0)
    cpu, wall = _cpu_s(), time.perf_counter()
    result = env.evaluate_sync(client=client, model="scripted", sampling_args={"temperature": 0.0, "max_tokens": 64},
                               num_examples=episodes, rollouts_per_example=1, max_concurrent=concurrency)  # fmt: skip
    wall, cpu = time.perf_counter() - wall, _cpu_s() - cpu
    rewards = _vf_rewards(result)
    return {"wall_s": wall, "cpu_s": cpu, "episodes": len(rewards), "steps": len(rewards),
            "reward": sum(rewards) / len(rewards)}  # fmt: skip


def _vf_rewards(result) -> list[float]:
    for attr in ("reward", "rewards"):
        value = getattr(result, attr, None)
        if value is None and isinstance(result, dict):
            value = result.get(attr)
        if value is not None:
            return [float(v) for v in value]
    outputs = result["outputs"] if isinstance(result, dict) else result.outputs
    return [float(o["reward"] if isinstance(o, dict) else o.reward) for o in outputs]


# --- orchestration -------------------------------------------------------------------------------


def _serve(port: int, latency_s: float) -> None:
    import re

    import uvicorn

    from envhub.evaluation.model_server.scripted import ScriptedEndpoint

    def solve(messages) -> str:
        questions = re.findall(r"What is ([^?\n]*)\?", messages[-1]["content"])  # the last: after the example
        return f"<answer>{eval(questions[-1], {'__builtins__': {}})}</answer>" if questions else "?"

    endpoint = ScriptedEndpoint(solve, latency_s=latency_s)
    uvicorn.run(endpoint.app, host="127.0.0.1", port=port, log_level="error", backlog=2048)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _measure(python: str, harness: str, base_url: str, episodes: int, concurrency: int, timeout: float) -> dict:
    import httpx

    stats_url = base_url.removesuffix("/v1") + "/stats"
    httpx.delete(stats_url)
    cmd = [python, __file__, "_run", harness, base_url, str(episodes), str(concurrency)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{harness} c={concurrency} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    stats = httpx.get(stats_url).json()
    steps = result["steps"]
    requests = stats["requests"] - result.get("warmup_requests", 0)
    result.update(
        harness=harness,
        concurrency=concurrency,
        requests=requests,
        episodes_per_s=result["episodes"] / result["wall_s"],
        endpoint_ms_per_request=1000 * stats["busy_s"] / max(stats["requests"], 1),
        harness_cpu_ms_per_step=1000 * result["cpu_s"] / steps,
        wall_ms_per_step=1000 * result["wall_s"] / steps,
    )
    # envhub runs the environment's own code (reset, step, rubric) inside the harness process;
    # verifiers' dataset is built before its clock starts. Harness-only CPU leaves the env code out.
    env_cpu = result.get("env_code_cpu_s", 0.0)
    result["env_code_cpu_ms_per_step"] = 1000 * env_cpu / steps
    result["harness_only_cpu_ms_per_step"] = 1000 * (result["cpu_s"] - env_cpu) / steps
    if concurrency == 1:
        result["client_overhead_ms_per_step"] = result["wall_ms_per_step"] - result["endpoint_ms_per_request"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vf-python", default=None, help="Interpreter with verifiers installed (omit to skip it).")
    parser.add_argument("--concurrency", default="1,8,64")
    parser.add_argument("--episodes", default="100,300,600", help="Episodes per run, one per concurrency level.")
    parser.add_argument("--latency-ms", default="0,20", help="Endpoint latencies to measure at.")
    parser.add_argument("--timeout", type=float, default=300, help="Most seconds one measurement may take.")
    parser.add_argument("--out", default=None, help="Write the results as JSON here.")
    args = parser.parse_args()
    import httpx

    levels = [int(c) for c in args.concurrency.split(",")]
    counts = [int(n) for n in args.episodes.split(",")]
    harnesses = [("envhub", sys.executable)] + ([("verifiers", args.vf_python)] if args.vf_python else [])
    results = []
    for latency_ms in [float(x) for x in args.latency_ms.split(",")]:
        port = _free_port()
        server = subprocess.Popen([sys.executable, __file__, "_serve", str(port), str(latency_ms / 1000)], cwd=ROOT)
        base_url = f"http://127.0.0.1:{port}/v1"
        try:
            for _ in range(200):
                try:
                    httpx.get(base_url + "/models", timeout=1)
                    break
                except httpx.HTTPError:
                    time.sleep(0.1)
            for concurrency, episodes in zip(levels, counts):
                for name, python in harnesses:
                    r = _measure(python, name, base_url, episodes, concurrency, args.timeout)
                    r["endpoint_latency_ms"] = latency_ms
                    results.append(r)
                    extra = f", overhead {r['client_overhead_ms_per_step']:.2f} ms/step" if concurrency == 1 else ""
                    print(f"latency {latency_ms:g} ms  {name:9s} c={concurrency:<3d} {r['episodes_per_s']:8.1f} ep/s  "
                          f"endpoint {r['endpoint_ms_per_request']:.2f} ms/req  harness CPU "
                          f"{r['harness_cpu_ms_per_step']:.2f} ms/step (env code {r['env_code_cpu_ms_per_step']:.2f})  "
                          f"reward {r['reward']:.2f}{extra}", flush=True)  # fmt: skip
        finally:
            server.terminate()
            server.wait(timeout=10)
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": f"{os.cpu_count()} CPUs", "results": results}, indent=2))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_serve":
        _serve(int(sys.argv[2]), float(sys.argv[3]))
    elif len(sys.argv) > 1 and sys.argv[1] == "_run":
        harness, base_url, episodes, concurrency = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
        runner = run_envhub if harness == "envhub" else run_verifiers
        print(json.dumps(runner(base_url, episodes, concurrency)))
    else:
        main()
