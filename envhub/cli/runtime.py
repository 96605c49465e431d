"""Commands that run environments as services: serve, build."""

from __future__ import annotations

import typer
from rich.console import Console

console = Console(stderr=True)


def serve(
    env_id: str = typer.Argument(..., metavar="FOLDER|NAME", help="Environment folder, bundled name, or namespace/name@version."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (loopback by default)."),
    port: int = typer.Option(8000, help="TCP port to listen on."),
    uds: str = typer.Option(None, help="Listen on this Unix socket instead of HOST:PORT."),
    max_sessions: int = typer.Option(4096, help="Sessions held at once; more are refused (HTTP 503, `capacity`, with Retry-After)."),
    idle_timeout: float = typer.Option(600.0, help="Seconds before an idle session is closed; 0 keeps them."),
    step_timeout: float = typer.Option(None, help="Seconds allowed to one reset/step (default: the manifest's \\[limits])."),
    max_body_mb: float = typer.Option(8.0, help="Largest request body, in MiB (HTTP 413, `body_too_large`, past it)."),
    threads: int = typer.Option(16, help="Threads running environment code."),
    max_stuck_calls: int = typer.Option(None, help="Calls stuck past the step timeout that the server outlives (default: 3 x threads); past it, 503."),
    evict_idle: float = typer.Option(60.0, help="Seconds; a full server seats a new session in the one idle longest, if idle this long (0: never)."),
    header_timeout: float = typer.Option(10.0, help="Seconds a connection has to send a request's headers (then it is closed)."),
    body_timeout: float = typer.Option(30.0, help="Seconds a request's body has to arrive (HTTP 408, `request_timeout`, past it)."),
    log_level: str = typer.Option("info", help="uvicorn log level."),
    token_file: str = typer.Option(None, help="Require `Authorization: Bearer TOKEN` on every route; the token is the file's first line (else $ENVHUB_SERVE_TOKEN)."),
    no_token: bool = typer.Option(False, "--no-token", help="Serve a non-loopback address without a token (anyone who reaches it can run episodes)."),
) -> None:
    """Serve an environment's episodes over HTTP (the protocol is at GET /openapi.json)."""
    from envhub.runtime.locate import locate
    from envhub.runtime.server import ServerConfig
    from envhub.runtime.server import serve as run_server
    from envhub.runtime.trust import require_trusted

    from envhub.errors import BadRequestError
    from envhub.runtime.server.auth import TOKEN_ENV, read_token

    token = read_token(token_file)
    if token is None and not uds and not no_token and not _is_loopback(host):
        raise BadRequestError(
            f"refusing to serve {host} without a token: anyone who reaches it could run episodes",
            hint=f"pass --token-file FILE or set {TOKEN_ENV} (or --no-token to serve it open)",
        )
    located = locate(env_id)
    require_trusted(located, "inprocess")  # the server imports the environment into this process
    config = ServerConfig(
        max_sessions=max_sessions,
        idle_timeout_s=idle_timeout or None,
        step_timeout_s=step_timeout,
        max_body_bytes=int(max_body_mb * 1024 * 1024),
        threads=threads,
        max_stuck_calls=max_stuck_calls,
        evict_idle_s=evict_idle or None,
        header_timeout_s=header_timeout,
        body_timeout_s=body_timeout,
    )
    where = f"unix://{uds}" if uds else f"http://{host}:{port}"

    def ready(server) -> None:
        console.print(
            f"serving [bold]{server.identity.ref}[/] ({server.identity.digest}) on {where}\n"
            f"[dim]protocol: {where}/openapi.json; connect with envhub.runtime.client.RemoteEnv({where!r})[/]",
            highlight=False,
        )

    run_server(located.folder, host=host, port=port, uds=uds, digest=located.digest, config=config,
               log_level=log_level, on_ready=ready, token=token)


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def build(
    env_id: str = typer.Argument(..., metavar="FOLDER|NAME", help="Environment folder, bundled name, or namespace/name@version."),
    base: str = typer.Option(None, help="Base image (default: $ENVHUB_BASE_IMAGE, else python:3.11-slim)."),
    force: bool = typer.Option(False, "--force", help="Rebuild even when an image of this artifact exists."),
) -> None:
    """Build the Docker image that serves an environment (without network), and record it in the local registry."""
    from envhub.runtime.images import build_image, record_image
    from envhub.errors import ImageBuildError
    from envhub.runtime.locate import locate

    located = locate(env_id)
    with console.status(f"building the image of {located.manifest.ref}") as status:
        try:
            built = build_image(located.folder, digest=located.digest, base=base, force=force,
                                log=lambda line: status.update(line))
        except ImageBuildError as exc:
            if exc.log:
                console.print(exc.log, highlight=False, markup=False)
            raise
    recorded = located.registry == "local" and record_image(located.manifest, built)
    state = "reused" if built.reused else "built"
    typer.echo(built.tag)
    console.print(
        f"{state} [bold]{built.tag}[/] ({built.image_id[:19]}) for {located.manifest.ref} {built.digest[:19]}"
        + (" [dim](recorded in the local registry)[/]" if recorded else ""),
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.command()(build)
