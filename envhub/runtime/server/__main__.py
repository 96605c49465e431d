"""``python -m envhub.runtime.server FOLDER``: the server that the process and docker runtimes start.

Kept free of the CLI's dependencies (typer, rich) so that container images stay small;
``envhub serve`` is the command for people.
"""

from __future__ import annotations

import argparse
import os
import sys

from envhub.errors import EnvhubError
from envhub.runtime.server.protocol import MAX_SESSIONS


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m envhub.runtime.server", description=__doc__)
    p.add_argument("folder", help="the environment's folder (with envhub.toml)")
    p.add_argument("--uds", help="listen on this Unix socket instead of host:port")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--digest", help="the artifact digest to report (computed from the folder when absent)")
    p.add_argument("--max-sessions", type=int, default=MAX_SESSIONS)
    p.add_argument("--idle-timeout", type=float, default=600.0, help="seconds; 0 keeps idle sessions")
    p.add_argument("--step-timeout", type=float, default=None, help="seconds; default: the manifest's limits")
    p.add_argument("--max-body-mb", type=float, default=8.0)
    p.add_argument("--threads", type=int, default=16)
    p.add_argument("--max-stuck-calls", type=int, default=None, help="calls stuck past the step timeout outlived (default: 3 x threads)")
    p.add_argument("--evict-idle", type=float, default=60.0, help="seconds; a full server seats new sessions in ones idle this long (0: never)")
    p.add_argument("--header-timeout", type=float, default=10.0, help="seconds a connection has to send a request's headers")
    p.add_argument("--body-timeout", type=float, default=30.0, help="seconds a request's body has to arrive (HTTP 408 past it)")
    p.add_argument("--memory-mb", type=int, default=None, help="cap the environment's data memory (RLIMIT_DATA)")
    p.add_argument("--parent-pid", type=int, default=None, help="exit when this process is no longer the parent")
    p.add_argument("--log-level", default="warning")
    p.add_argument("--token-file", default=None, help="require `Authorization: Bearer TOKEN`, the file's first line")
    args = p.parse_args(argv)

    from envhub.runtime.server import ServerConfig, serve
    from envhub.runtime.server.auth import read_token

    config = ServerConfig(
        max_sessions=args.max_sessions,
        idle_timeout_s=args.idle_timeout or None,
        step_timeout_s=args.step_timeout,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        threads=args.threads,
        max_stuck_calls=args.max_stuck_calls,
        evict_idle_s=args.evict_idle or None,
        header_timeout_s=args.header_timeout,
        body_timeout_s=args.body_timeout,
    )
    try:
        serve(
            args.folder,
            host=args.host,
            port=args.port,
            uds=args.uds,
            digest=args.digest,
            config=config,
            memory_mb=args.memory_mb,
            parent_pid=args.parent_pid,
            log_level=args.log_level,
            token=read_token(args.token_file, from_env=False),  # never from the environment: runtimes inherit it
        )
    except EnvhubError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if exc.hint:
            print(f"next: {exc.hint}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
