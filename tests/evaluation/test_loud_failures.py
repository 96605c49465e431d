"""A run that cannot do what was asked fails at once and loudly (issue 14): an unknown environment,
bad kwargs and an unreachable endpoint are caught before the first episode; a run where every
episode (or more than --max-error-rate of them) errored exits non-zero with the error types and the
first error on screen. Real CLI processes, a real scripted endpoint on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from evalhelpers import FIXTURES

from envhub.errors import EvalRunError
from envhub.evaluation import evaluate
from envhub.evaluation.model_server.scripted import ScriptedEndpoint, serve_in_thread
from envhub.evaluation.runner import EvalConfig, run_eval

CLI = [sys.executable, "-c", "import sys; from envhub.cli import main; main(sys.argv[1:])"]


def _cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


def _closed_port_url() -> str:
    with socket.socket() as sock:  # bound and closed again: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_an_unknown_environment_exits_1_at_once_with_a_suggestion_and_writes_nothing(endpoint, tmp_path):
    _, url = endpoint
    done = _cli("eval", "arithmetc", "--base-url", url, "-m", "scripted", "-n", "2", cwd=tmp_path)
    assert done.returncode == 1, done.stdout
    assert len(_error_lines(done.stderr)) == 1
    assert "`arithmetc` not found" in done.stderr and "Did you mean `arithmetic`" in done.stderr
    assert "next:" in done.stderr
    assert not (tmp_path / "runs").exists()  # no folder of a run that never started


@pytest.mark.parametrize(
    ("env_arg", "expected"),
    [("levl=easy", "bad arguments ['levl']"), ("level=superhard", "'superhard' is not one of")],
)
def test_bad_environment_kwargs_exit_1_before_any_episode(endpoint, tmp_path, env_arg, expected):
    server, url = endpoint
    done = _cli("eval", "arithmetic", "--env-arg", env_arg, "--base-url", url, "-m", "scripted", "-n", "2", cwd=tmp_path)
    assert done.returncode == 1 and expected in done.stderr
    assert len(_error_lines(done.stderr)) == 1
    assert server.requests == []  # not one episode was played


def test_a_closed_port_exits_1_at_once_naming_the_url_and_the_next_step(home, tmp_path):
    url = _closed_port_url()
    done = _cli("eval", "arithmetic", "--base-url", url, "-m", "scripted", "-n", "4", cwd=tmp_path)
    assert done.returncode == 1
    [line] = _error_lines(done.stderr)
    assert f"the endpoint {url} does not answer" in line and "Connect" in line
    assert "envhub serve-model" in done.stderr  # the next step
    assert not (tmp_path / "runs").exists()
    # one refused connection, not 5 attempts with 7.5 s of backoff between them (measured in this
    # process, so that the interpreter's start on a loaded machine does not count)
    started = time.perf_counter()
    with pytest.raises(EvalRunError, match="does not answer"):
        run_eval(EvalConfig(env="arithmetic", out_dir=str(tmp_path / "api"), base_url=url, model="scripted", episodes=4))
    assert time.perf_counter() - started < 3.0


def test_the_python_api_raises_eval_run_error_before_the_first_episode(endpoint, tmp_path):
    server, url = endpoint
    with pytest.raises(EvalRunError, match="arithmetc` not found"):
        evaluate("arithmetc", base_url=url, model="scripted", episodes=2, out_dir=tmp_path / "a")
    with pytest.raises(EvalRunError, match="bad arguments"):
        evaluate("arithmetic", base_url=url, model="scripted", episodes=2, out_dir=tmp_path / "b", env_kwargs={"levl": 1})
    with pytest.raises(EvalRunError, match="does not answer"):
        evaluate("arithmetic", base_url=_closed_port_url(), model="scripted", episodes=2, out_dir=tmp_path / "c")
    with pytest.raises(EvalRunError, match="option `split`: 'nope'"):  # the probe resets on the run's split
        evaluate("arithmetic", base_url=url, model="scripted", episodes=2, split="nope", out_dir=tmp_path / "d")
    assert server.requests == [] and not any((tmp_path / x).exists() for x in "abcd")


def test_a_model_the_endpoint_does_not_serve_is_named_with_what_it_lists(endpoint, tmp_path):
    server, url = endpoint
    server.faults.append("400")  # the one-token probe for an unlisted model is refused
    with pytest.raises(EvalRunError, match=r"refuses model 'gpt-nope'.*it lists scripted") as info:
        run_eval(EvalConfig(env="arithmetic", out_dir=str(tmp_path / "run"), base_url=url, model="gpt-nope", episodes=2))
    assert "--model" in info.value.hint
    assert len(server.requests) == 1 and server.requests[0]["max_tokens"] == 1


def test_an_unlisted_model_the_endpoint_accepts_runs(endpoint, tmp_path):
    server, url = endpoint  # serve-model accepts `default` without listing it: only a refusal fails
    summary = run_eval(EvalConfig(env="arithmetic", out_dir=str(tmp_path / "run"), base_url=url, model="alias",
                                  episodes=2, report=False))  # fmt: skip
    assert summary.errors == 0 and len(server.requests) == 1 + 2


def test_every_episode_erroring_fails_the_run_with_types_and_the_first_message(home, tmp_path):
    server = ScriptedEndpoint()
    server.faults.extend(["500"] * 4)
    with serve_in_thread(server.app) as url:
        with pytest.raises(EvalRunError) as info:
            run_eval(EvalConfig(env="arithmetic", out_dir=str(tmp_path / "api"), base_url=url, model="scripted",
                                episodes=4, concurrency=2, max_retries=0))  # fmt: skip
        message = str(info.value)
        assert "every episode (4 of 4) ended in an error" in message and "EndpointError: 4" in message
        assert "HTTP 500" in message and "--retry-errors" in info.value.hint
        assert (tmp_path / "api" / "summary.json").is_file() and (tmp_path / "api" / "report.html").is_file()

        server.faults.extend(["500"] * 4)
        done = _cli("eval", "arithmetic", "--base-url", url, "-m", "scripted", "-n", "4", "-c", "2",
                    "--max-retries", "0", "-o", str(tmp_path / "cli"), cwd=tmp_path)  # fmt: skip
    assert done.returncode == 1
    [line] = _error_lines(done.stderr)
    assert "every episode (4 of 4) ended in an error (EndpointError: 4)" in line and "HTTP 500" in line


def test_environment_errors_in_every_episode_fail_the_run(home, tmp_path):
    server = ScriptedEndpoint(lambda messages: "raise")  # the faulty environment raises on this answer
    with serve_in_thread(server.app) as url:
        with pytest.raises(EvalRunError, match=r"every episode \(3 of 3\).*EnvironmentFailure: 3"):
            run_eval(EvalConfig(env=str(FIXTURES / "faulty"), split="train", out_dir=str(tmp_path / "run"),
                                base_url=url, model="scripted", episodes=3))  # fmt: skip


def test_partial_failures_are_printed_and_max_error_rate_fails_past_it(home, tmp_path):
    server = ScriptedEndpoint()
    with serve_in_thread(server.app) as url:
        args = ["eval", "arithmetic", "--base-url", url, "-m", "scripted", "-n", "6", "-c", "1", "--max-retries", "0"]
        server.faults.extend(["500"] * 2)  # the first two episodes fail
        done = _cli(*args, "-o", str(tmp_path / "default"), cwd=tmp_path)
        assert done.returncode == 0, done.stderr  # the default fails only when every episode errored
        assert "2 of 6 episodes (33%) ended in an error" in done.stdout and "EndpointError: 2" in done.stdout

        server.faults.extend(["500"] * 2)
        done = _cli(*args, "--max-error-rate", "0.25", "-o", str(tmp_path / "strict"), cwd=tmp_path)
        assert done.returncode == 1
        assert "2 of 6 episodes (33%) ended in an error, more than the --max-error-rate of 25%" in done.stderr

        server.faults.extend(["500"] * 2)
        summary = run_eval(EvalConfig(env="arithmetic", out_dir=str(tmp_path / "lenient"), base_url=url, model="scripted",
                                      episodes=6, concurrency=1, max_retries=0, max_error_rate=0.5))  # fmt: skip
    assert summary.errors == 2 and summary.first_error["type"] == "EndpointError"
    with pytest.raises(EvalRunError, match="max_error_rate must be in"):
        run_eval(EvalConfig(env="arithmetic", out_dir=str(tmp_path / "bad"), max_error_rate=1.5))
