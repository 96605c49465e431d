"""The hub server's ASGI app (FastAPI): the HTTP face of :class:`envhub.hub.service.Hub`.

Every error is JSON ``{"error": {"code", "message", "hint", "fields"}}`` with its status, written by
:func:`envhub.wire.to_body`: 401 without a (valid) token, 403 without the right to a namespace, 404
with near matches (also for a private environment the caller may not see: the same answer as for
a missing name), 409 on version conflicts, 413 on oversize uploads, 422 on bad input. Names and versions follow :mod:`envhub.identity.ids`, as in the SDK.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures, some of which use local aliases.

import logging
from functools import partial
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, Path as PathParam, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from pydantic import AfterValidator, BaseModel, Field

from envhub.errors import (
    AuthenticationError,
    BadRequestError,
    EnvhubError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
)
from envhub.hub.db import make_engine, migrate, sessions, sqlite_url
from envhub.hub.page import render_index_page
from envhub.hub.service import RESERVED_NAMESPACES, Hub, Principal
from envhub.hub.settings import SETTINGS_ENV, HubSettings, settings_from_env, settings_to_env  # noqa: F401 - re-exported
from envhub.hub.throttle import FailureThrottle
from envhub.hub.uploads import ScratchSpace, UploadSlots, receive
from envhub.identity.ids import MAX_VERSION_LENGTH, NAME_PATTERN, VERSION_PATTERN, Version
from envhub.registry.http import HUB_SERVICE
from envhub.wire import to_body


log = logging.getLogger("envhub.hub")

#: Starlette's own error statuses, as the envhub classes they are answered with.
_HTTP_ERRORS: dict[int, type[EnvhubError]] = {404: NotFoundError, 405: MethodNotAllowedError}


def _version(text: str) -> str:
    Version.parse(text)  # the SDK's parser: its ValueError says what is wrong (build metadata, length...)
    return text


NameParam = Annotated[str, PathParam(pattern=NAME_PATTERN, max_length=64)]
VersionParam = Annotated[
    str, PathParam(max_length=MAX_VERSION_LENGTH, json_schema_extra={"pattern": VERSION_PATTERN}), AfterValidator(_version)
]


class TokenRequest(BaseModel):
    name: str = Field("", max_length=128)
    scope: Literal["read", "write"] = "read"
    expires_in_s: int | None = Field(None, gt=0, le=10 * 365 * 86400, description="Lifetime in seconds; none: no expiry.")


class UserRequest(BaseModel):
    name: str = Field(pattern=NAME_PATTERN, max_length=64)
    is_admin: bool = False


class NameRequest(BaseModel):
    name: str = Field(pattern=NAME_PATTERN, max_length=64)


class UserRef(BaseModel):
    user: str = Field(pattern=NAME_PATTERN, max_length=64)


class VisibilityRequest(BaseModel):
    private: bool


class PackItem(BaseModel):
    ref: str = Field(max_length=200, description="namespace/name@x.y.z")
    digest: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")


class PackRequest(BaseModel):
    license: str = Field("", max_length=100_000)
    description: str = Field("", max_length=10_000)
    environments: list[PackItem] = Field(min_length=1, max_length=1000)
    signature: str | None = Field(None, max_length=128)
    key_id: str | None = Field(None, max_length=32)
    public_key: str | None = Field(None, max_length=64, description="The signer's ed25519 public key (base64), pinned by pullers on first use.")


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable name of the error, e.g. env_not_found, unauthenticated, rate_limited.")
    message: str
    hint: str | None = Field(None, description="The next step to take.")
    fields: dict = Field(default_factory=dict, description="The error's typed fields (e.g. available versions, retry_after).")


class ErrorBody(BaseModel):
    """Every error the hub answers (envhub.wire.to_body)."""

    error: ErrorDetail


_WHY = {
    400: "Malformed request: a body that is not JSON, an artifact that is not one, a digest that does not match.",
    401: "No valid token: unknown, expired or revoked (or one up its chain is).",
    403: "The token may not do this: another's namespace, or the `read` scope for a change.",
    404: "No such name, or one the caller may not see (the same answer).",
    409: "A conflict: the version or name is taken, or reserved.",
    413: "The upload is over the hub's limit.",
    422: "The path, query or body does not fit the schema.",
    429: "Too many failed authentications from this client; wait Retry-After seconds.",
    503: "The hub is receiving as many uploads at once as it may; wait Retry-After seconds.",
}


def _answers(*statuses: int) -> dict:
    """The OpenAPI ``responses`` of the error statuses a route can answer: 401 and 429 wherever a
    token is read; a route that takes input (422) can also be sent a malformed one (400)."""
    shown = {401, 429, *statuses, *((400,) if 422 in statuses else ())}
    return {
        s: {"model": ErrorBody, "description": _WHY[s],
            **({"headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}}} if s in (429, 503) else {})}
        for s in sorted(shown)
    }


def build_hub(settings: HubSettings) -> Hub:
    """The hub of ``settings``: the database migrated, the artifact store, this process's scratch
    folder; what a crashed process left (scratch, unfinished writes, unreferenced blobs) removed."""
    data_dir = Path(settings.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.database_url or sqlite_url(data_dir / "hub.db"))
    migrate(engine)
    scratch = ScratchSpace(data_dir / "scratch")
    hub = Hub(sessions(engine), settings.make_storage(), max_unpacked_bytes=settings.max_unpacked_bytes, url=settings.public_url,
              reserved_namespaces=settings.reserved_namespaces, scratch=scratch)
    swept = hub.sweep(grace_s=settings.orphan_grace_s)
    if scratch.removed or any(swept.values()):
        log.warning("removed what a crash left: %d scratch files, %d unfinished writes, %d unreferenced blobs",
                    scratch.removed, swept["incomplete"], swept["orphans"])
    return hub


def create_app(settings: HubSettings | None = None, *, hub: Hub | None = None) -> FastAPI:
    settings = settings or HubSettings()
    hub = hub or build_hub(settings)
    app = FastAPI(
        title="envhub hub",
        version="1",
        description="Publish, pull and sell reinforcement-learning environments for language models.",
    )
    app.state.hub = hub
    app.state.settings = settings
    bearer = HTTPBearer(auto_error=False, description="A token from `envhub hub adduser` or POST /api/v1/tokens.")

    @app.exception_handler(EnvhubError)
    async def _envhub_error(request: Request, exc: EnvhubError) -> JSONResponse:
        status, body = to_body(exc)
        if status in (401, 403, 429):
            client = request.client.host if request.client else "?"
            log.warning("denied %s %s from %s: %s %s", request.method, request.url.path, client, status, exc)
        retry_after = getattr(exc, "retry_after", None)  # 429 for failed logins, 503 for busy uploads
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        broken = [e for e in exc.errors() if e.get("type") == "json_invalid"]
        if broken:  # not JSON at all: the client's mistake before any schema applies
            error: EnvhubError = BadRequestError(f"the request body is not JSON: {broken[0].get('ctx', {}).get('error', broken[0]['msg'])}",
                                                 hint="send a JSON object; see /docs for the request shapes")
        else:
            error = InvalidRequestError([f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()])
        return await _envhub_error(request, error)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Starlette's own answers (no such route, a method a route does not take) in the same envelope.
        said = {404: f"no route {request.url.path}", 405: f"{request.url.path} does not take {request.method}"}
        error = _HTTP_ERRORS.get(exc.status_code, BadRequestError)(said.get(exc.status_code, str(exc.detail)), hint="see /docs for the API's routes")
        error.status = exc.status_code
        response = await _envhub_error(request, error)
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(Exception)
    async def _bug(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("hub error", exc_info=exc)
        status, body = to_body(exc)
        return JSONResponse(body, status_code=status)

    throttle = FailureThrottle(limit=settings.auth_failure_limit, window_s=settings.auth_failure_window_s)
    uploads = UploadSlots(settings.max_concurrent_uploads, wait_s=settings.upload_wait_s)

    def principal(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Principal | None:
        if credentials is None:
            return None
        client = request.client.host if request.client else "?"
        throttle.check(client)  # over the limit: even a valid token waits, so guessing learns nothing
        try:
            return hub.authenticate(credentials.credentials)
        except AuthenticationError:
            throttle.failed(client)
            raise

    Who = Annotated[Principal | None, Depends(principal)]

    # --- pages and discovery ---------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def front_page() -> HTMLResponse:
        return HTMLResponse(render_index_page(hub.index(None)))

    @app.get("/registry.json", summary="The public index, in the static-registry format")
    def registry_json() -> Response:
        return Response(hub.index(None).to_json(), media_type="application/json")

    @app.get("/api/v1/health", summary="Liveness, and what this server is")
    def health() -> dict:
        return {"service": HUB_SERVICE, "status": "ok"}

    @app.get("/api/v1/whoami", summary="The user and scope of the token sent", responses=_answers())
    def whoami(who: Who) -> dict:
        if who is None:
            return {"user": None, "scope": None}
        return {"user": who.name, "scope": who.scope, "is_admin": who.is_admin}

    @app.get("/api/v1/index", summary="Every environment the caller can see, and every pack", responses=_answers())
    def index(who: Who) -> Response:
        return Response(hub.index(who).to_json(), media_type="application/json")

    @app.get("/api/v1/search", summary="Environments whose name, description or tags hold every word", responses=_answers(422))
    def search(who: Who, q: Annotated[str, Query(max_length=200)] = "") -> dict:
        return {"results": [e.model_dump(mode="json") for e in hub.search(who, q)]}

    # --- environments ----------------------------------------------------------------------------

    @app.get("/api/v1/envs/{namespace}/{name}", summary="An environment and the versions the caller may pull", responses=_answers(404, 422))
    def env(namespace: NameParam, name: NameParam, who: Who) -> dict:
        return hub.env_entry(who, namespace, name).model_dump(mode="json")

    @app.patch("/api/v1/envs/{namespace}/{name}", summary="Make an environment private or public (owner only)", responses=_answers(403, 404, 422))
    def set_visibility(namespace: NameParam, name: NameParam, body: VisibilityRequest, who: Who) -> dict:
        return hub.set_visibility(who, namespace, name, private=body.private).model_dump(mode="json")

    @app.post("/api/v1/envs/{namespace}/{name}/bundlers", summary="Let another namespace's packs sell an environment (owner only)", responses=_answers(403, 404, 409, 422))
    def allow_bundling(namespace: NameParam, name: NameParam, body: NameRequest, who: Who) -> dict:
        return hub.allow_bundling(who, namespace, name, body.name)

    @app.delete("/api/v1/envs/{namespace}/{name}/bundlers/{bundler}", summary="Stop another namespace's packs selling an environment", responses=_answers(403, 404, 409, 422))
    def disallow_bundling(namespace: NameParam, name: NameParam, bundler: NameParam, who: Who) -> dict:
        return hub.allow_bundling(who, namespace, name, bundler, allowed=False)

    @app.put(
        "/api/v1/envs/{namespace}/{name}/{version}",
        summary="Publish an artifact (the tar.gz bytes as the body)",
        status_code=201,
        openapi_extra={"requestBody": {"required": True, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}},
        responses=_answers(400, 403, 409, 413, 422, 503),
    )
    async def publish(
        namespace: NameParam, name: NameParam, version: VersionParam, request: Request, who: Who,
        private: bool = False,
    ) -> JSONResponse:
        await run_in_threadpool(hub.check_can_publish, who, namespace)
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > settings.max_upload_bytes:
            raise PayloadTooLargeError(int(declared), settings.max_upload_bytes)
        async with uploads.slot():  # the body waits unread in the socket until a slot is free
            received = await receive(request.stream(), hub.scratch.path("upload"), max_bytes=settings.max_upload_bytes)
            try:
                entry, created = await run_in_threadpool(
                    partial(hub.publish, who, namespace, name, version, received.path, digest=received.digest,
                            declared_digest=request.headers.get("x-envhub-digest"), private=private)
                )
            finally:
                received.path.unlink(missing_ok=True)
        return JSONResponse(entry.model_dump(mode="json"), status_code=201 if created else 200)

    @app.get("/api/v1/envs/{namespace}/{name}/{version}/artifact.tar.gz", include_in_schema=False)
    @app.get(
        "/api/v1/envs/{namespace}/{name}/{version}/artifact",
        summary="Download an artifact (recorded in the owner's audit log)",
        response_class=Response,
        responses={**_answers(400, 404, 422), 200: {"content": {"application/gzip": {}}}},
    )
    def artifact(namespace: NameParam, name: NameParam, version: VersionParam, who: Who, request: Request) -> Response:
        client = request.client.host if request.client else None
        download = hub.artifact(who, namespace, name, version, client=client)
        headers = {"X-Envhub-Digest": download.digest, "Content-Length": str(download.size),
                   "Content-Disposition": f'attachment; filename="{name}-{version}.tar.gz"'}
        return StreamingResponse(download.chunks(), media_type="application/gzip", headers=headers)  # from storage, a chunk at a time

    # --- users, organisations, tokens ------------------------------------------------------------

    def need(who: Principal | None) -> Principal:
        if who is None:
            from envhub.errors import AuthenticationError

            raise AuthenticationError("this needs a token", registry=settings.public_url or None)
        return who

    @app.post("/api/v1/users", summary="Create a user (administrators only); answers its first token", status_code=201, responses=_answers(403, 409, 422))
    def create_user(body: UserRequest, who: Who) -> dict:
        user, token = hub.create_user(body.name, is_admin=body.is_admin, admin=need(who))
        return {**user, "token": token}

    @app.post("/api/v1/orgs", summary="Create an organisation namespace, with the caller as a member", status_code=201, responses=_answers(403, 409, 422))
    def create_org(body: NameRequest, who: Who) -> dict:
        return hub.create_org(need(who), body.name)

    @app.post("/api/v1/orgs/{org}/members", summary="Add a user to an organisation", responses=_answers(403, 404, 409, 422))
    def add_member(org: NameParam, body: UserRef, who: Who) -> dict:
        return hub.add_member(need(who), org, body.user)

    @app.post("/api/v1/tokens", summary="Create a token for the caller (scoped, optionally expiring)", status_code=201, responses=_answers(403, 409, 422))
    def create_token(body: TokenRequest, who: Who) -> dict:
        return hub.create_token(need(who), name=body.name, scope=body.scope, expires_in_s=body.expires_in_s)

    @app.get("/api/v1/tokens", summary="The caller's tokens (never their values)", responses=_answers())
    def list_tokens(who: Who) -> dict:
        return {"tokens": hub.list_tokens(need(who))}

    @app.delete("/api/v1/tokens/{token_id}", summary="Revoke a token", responses=_answers(404, 422))
    def revoke_token(token_id: Annotated[int, PathParam(ge=1, le=2**62)], who: Who) -> dict:
        return hub.revoke_token(need(who), token_id)

    # --- packs, entitlements, audit --------------------------------------------------------------

    @app.get("/api/v1/packs/{namespace}/{name}", summary="A pack's versions, licenses, contents and signatures", responses=_answers(404, 422))
    def pack(namespace: NameParam, name: NameParam, who: Who) -> dict:
        versions = hub.pack_versions(who, namespace, name)
        return {"namespace": namespace, "name": name, "versions": {v: p.model_dump(mode="json") for v, p in versions.items()}}

    @app.put("/api/v1/packs/{namespace}/{name}/{version}", summary="Publish a pack version", status_code=201, responses=_answers(400, 403, 404, 409, 422))
    def publish_pack(namespace: NameParam, name: NameParam, version: VersionParam, body: PackRequest, who: Who) -> JSONResponse:
        entry, created = hub.publish_pack(who, namespace, name, version, body.model_dump(mode="json"))
        return JSONResponse(entry.model_dump(mode="json"), status_code=201 if created else 200)

    @app.get("/api/v1/packs/{namespace}/{name}/grants", summary="Who is entitled to a pack (owner only)", responses=_answers(403, 404, 422))
    def grants(namespace: NameParam, name: NameParam, who: Who) -> dict:
        return {"grants": hub.grants(who, namespace, name)}

    @app.post("/api/v1/packs/{namespace}/{name}/grants", summary="Entitle a user to a pack", responses=_answers(403, 404, 409, 422))
    def grant(namespace: NameParam, name: NameParam, body: UserRef, who: Who) -> dict:
        return hub.grant(who, namespace, name, body.user)

    @app.delete("/api/v1/packs/{namespace}/{name}/grants/{user}", summary="Withdraw a user's entitlement", responses=_answers(403, 404, 422))
    def revoke(namespace: NameParam, name: NameParam, user: NameParam, who: Who) -> dict:
        return hub.revoke(who, namespace, name, user)

    @app.get("/api/v1/audit", summary="Pulls, publishes and grants in a namespace, newest first (owner only)", responses=_answers(403, 422))
    def audit(
        namespace: Annotated[str, Query(pattern=NAME_PATTERN, max_length=64)], who: Who,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    ) -> dict:
        return {"events": hub.audit_log(who, namespace, limit=limit)}

    return app


def uvicorn_options(settings: HubSettings) -> dict:
    """How uvicorn reads the client's address: ``X-Forwarded-For`` only from ``trusted_proxies``
    (uvicorn's own default believes it from any loopback client)."""
    if not settings.trusted_proxies:
        return {"proxy_headers": False}
    return {"proxy_headers": True, "forwarded_allow_ips": ",".join(settings.trusted_proxies)}


def app_from_environment() -> FastAPI:
    """The app for one of several uvicorn worker processes (a factory: ``uvicorn --factory``)."""
    return create_app(settings_from_env())
