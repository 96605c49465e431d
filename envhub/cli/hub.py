"""``envhub hub``: run a hub server and administer it (serve, adduser, token create|list|revoke)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from envhub.cli.common import console, hub_registry
from envhub.errors import RegistryError

hub_app = typer.Typer(help="Run and administer a hub server (needs the `hub` extra).", no_args_is_help=True)
token_app = typer.Typer(help="Tokens on a hub: create (scoped, expiring), list, revoke.", no_args_is_help=True)

DataOpt = typer.Option(Path("hub-data"), "--data", help="Folder for the SQLite database and the artifacts.")
ReserveOpt = typer.Option([], "--reserve", help="Also reserve this namespace (repeat); `envhub` always is.")
DbOpt = typer.Option(None, "--database-url", envvar="ENVHUB_HUB_DATABASE_URL", help="SQLAlchemy URL (default: SQLite in --data); e.g. postgresql+psycopg://user@host/db.")


def _settings(data: Path, database_url: str | None, *, reserve: list[str] = (), **kwargs):
    try:
        from envhub.hub import HubSettings
        from envhub.hub.service import RESERVED_NAMESPACES
    except ImportError as exc:
        raise RegistryError(f"the hub server needs its extra: {exc}", hint="pip install 'envhub[hub]'") from exc
    reserved = sorted({*RESERVED_NAMESPACES, *reserve})
    return HubSettings(data_dir=data, database_url=database_url, reserved_namespaces=reserved, **kwargs)


@hub_app.command("serve")
def serve(
    data: Path = DataOpt,
    database_url: str = DbOpt,
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    max_upload_mb: int = typer.Option(100, help="Largest artifact accepted (413 above)."),
    public_url: str = typer.Option("", help="The URL clients use, for messages (default http://HOST:PORT)."),
    workers: int = typer.Option(1, min=1, max=64, help="Worker processes (they share the database and the artifact store)."),
    trusted_proxy: list[str] = typer.Option([], "--trusted-proxy", help="A proxy address (or CIDR) whose X-Forwarded-For is believed (repeat); none by default."),
    auth_failures: int = typer.Option(20, "--auth-failures-per-minute", min=1, help="Failed authentications a client may make per minute before 429."),
    reserve: list[str] = ReserveOpt,
    max_concurrent_uploads: int = typer.Option(8, min=1, help="Uploads received at once by each process (others wait, then 503)."),
    orphan_grace: float = typer.Option(3600, "--orphan-grace", min=0, help="Seconds: at start-up, unreferenced blobs and unfinished writes older than this are removed."),
    s3_bucket: str = typer.Option(None, "--s3-bucket", envvar="ENVHUB_HUB_S3_BUCKET", help="Keep artifacts in this S3 bucket (shared by replicas) instead of --data."),
    s3_prefix: str = typer.Option("", "--s3-prefix", envvar="ENVHUB_HUB_S3_PREFIX", help="Key prefix in the bucket."),
    s3_endpoint_url: str = typer.Option(None, "--s3-endpoint-url", envvar="ENVHUB_HUB_S3_ENDPOINT_URL", help="An S3-compatible server (default: AWS)."),
    s3_region: str = typer.Option(None, "--s3-region", envvar="ENVHUB_HUB_S3_REGION"),
) -> None:
    """Serve the hub: the API (/docs), the index (/registry.json) and a page listing public environments (/).

    Replicas: run several on one PostgreSQL (--database-url) and one S3 bucket (--s3-bucket) behind a
    proxy. S3 credentials come from ENVHUB_HUB_S3_ACCESS_KEY_ID and ENVHUB_HUB_S3_SECRET_ACCESS_KEY,
    else from boto3's usual places (AWS_ACCESS_KEY_ID, ~/.aws, an instance role).
    """
    import os
    import uvicorn

    from envhub.hub import create_app

    from envhub.hub.app import uvicorn_options

    settings = _settings(data, database_url, max_upload_bytes=max_upload_mb << 20, public_url=public_url or f"http://{host}:{port}",
                         trusted_proxies=list(trusted_proxy), auth_failure_limit=auth_failures, reserve=reserve,
                         max_concurrent_uploads=max_concurrent_uploads, orphan_grace_s=orphan_grace, s3_bucket=s3_bucket,
                         s3_prefix=s3_prefix, s3_endpoint_url=s3_endpoint_url, s3_region=s3_region,
                         s3_access_key_id=os.environ.get("ENVHUB_HUB_S3_ACCESS_KEY_ID"),
                         s3_secret_access_key=os.environ.get("ENVHUB_HUB_S3_SECRET_ACCESS_KEY"))
    where = f"artifacts in s3://{s3_bucket}/{s3_prefix}" if s3_bucket else f"data in {data}"
    console.print(f"hub on http://{host}:{port} ({where}); create a user with `envhub hub adduser NAME --data {data}`", highlight=False)
    if workers == 1:
        uvicorn.run(create_app(settings), host=host, port=port, log_level="warning", timeout_graceful_shutdown=5, **uvicorn_options(settings))
        return
    from envhub.hub import build_hub
    from envhub.hub.settings import SETTINGS_ENV, settings_to_env

    build_hub(settings)  # migrate once here, before the workers start
    os.environ[SETTINGS_ENV] = settings_to_env(settings)
    uvicorn.run("envhub.hub.app:app_from_environment", factory=True, workers=workers, host=host, port=port,
                log_level="warning", timeout_graceful_shutdown=5, **uvicorn_options(settings))


@hub_app.command("adduser")
def adduser(
    name: str = typer.Argument(..., help="User (or, with --org, organisation) name; it is also its namespace."),
    data: Path = DataOpt,
    database_url: str = DbOpt,
    admin: bool = typer.Option(False, "--admin", help="May create users through the API."),
    org: str = typer.Option(None, "--member-of", help="Also add the user to this organisation (created when missing)."),
    reserve: list[str] = ReserveOpt,
) -> None:
    """Create a user directly in the hub's database and print its first (write) token, once."""
    from envhub.hub import build_hub
    from envhub.hub.models import OrgMember, User
    from envhub.errors import ConflictError
    from sqlalchemy import select

    hub = build_hub(_settings(data, database_url, reserve=reserve))
    user, token = hub.create_user(name, is_admin=admin)
    if org:
        try:
            hub.create_user(org, kind="org")
        except ConflictError:
            pass
        with hub.sessions() as s:
            org_id = s.scalar(select(User.id).where(User.name == org, User.kind == "org"))
            if org_id is None:
                raise RegistryError(f"{org!r} is a user, not an organisation", hint="pick another --member-of")
            s.add(OrgMember(org_id=org_id, user_id=user["id"]))
            s.commit()
    console.print(f"created user [bold]{name}[/]; its token (shown once):", highlight=False)
    typer.echo(token)


@token_app.command("create")
def token_create(
    scope: str = typer.Option("read", help="`read` (pull) or `write` (publish, grant)."),
    expires_in: int = typer.Option(None, "--expires-in", help="Lifetime in seconds (default: no expiry)."),
    name: str = typer.Option("", help="A label, e.g. the machine it is for."),
    registry: str = typer.Option(None, "--registry", "-r", help="The hub URL (default: the configured registry)."),
) -> None:
    """Create a token for yourself; prints it once."""
    created = hub_registry(registry).create_token(name=name, scope=scope, expires_in_s=expires_in)
    console.print(f"token {created['id']} ({created['scope']}, expires {created['expires_at'] or 'never'}):", highlight=False)
    typer.echo(created["token"])


@token_app.command("list")
def token_list(registry: str = typer.Option(None, "--registry", "-r")) -> None:
    """Your tokens (ids, scopes, expiry, revocation), never their values."""
    for t in hub_registry(registry).json("GET", "/tokens")["tokens"]:
        typer.echo(json.dumps(t, sort_keys=True))


@token_app.command("revoke")
def token_revoke(token_id: int = typer.Argument(...), registry: str = typer.Option(None, "--registry", "-r")) -> None:
    """Revoke one of your tokens; it stops working at once."""
    revoked = hub_registry(registry).revoke_token(token_id)
    console.print(f"revoked token {revoked['id']} ({revoked['prefix']}…)", highlight=False)


hub_app.add_typer(token_app, name="token")


def register(app: typer.Typer) -> None:
    app.add_typer(hub_app, name="hub")
