"""Commands for registries: publish, pull, list, info, versions, search, lock, export-static, login,
logout, pack-keys, sign, audit-log and ``pack create|publish|grant|revoke|pull``.

Where a command reads (pull, list, versions, search, lock, info), the registry is the ``--registry`` flag,
``ENVHUB_REGISTRY``, or ``registry`` in ``$ENVHUB_HOME/config.toml``; with none of them, the local
registry and the bundled environments. ``publish`` writes to the same choice, the local registry
by default.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table
from typer.core import TyperGroup

from envhub.cli.common import RegistryOpt, console, hub_registry, pull_source, read_registries
from envhub.errors import EnvhubError, EnvNotFoundError, RegistryError, VersionNotFoundError


def _resolve_first(sources: list, env_id: str):
    """(registry, entry, version) from the first registry that has ``env_id``."""
    errors: list[EnvhubError] = []
    for registry in sources:
        try:
            entry, version = registry.resolve(env_id)
            return registry, entry, version
        except (EnvNotFoundError, VersionNotFoundError) as exc:
            errors.append(exc)
    for exc in errors:
        if isinstance(exc, VersionNotFoundError):
            raise exc
    raise errors[0]


def _find_entry(sources: list, env_id):
    """(registry, entry) from the first registry that knows the name; versions are not resolved."""
    errors: list[EnvhubError] = []
    for source in sources:
        try:
            if env_id.namespace is None:  # a bare name follows the registry's rules (envhub.registry.names)
                return source, source.resolve(env_id)[0]
            return source, source.index().find(env_id, where=source.description)
        except EnvNotFoundError as exc:
            errors.append(exc)
    raise errors[0]


# --- publish, pull -------------------------------------------------------------------------------


def publish(
    folder: Path = typer.Argument(..., help="Environment folder (with envhub.toml)."),
    registry: str = RegistryOpt,
    private: bool = typer.Option(False, "--private", help="On a hub: only the owner and entitled labs can pull it."),
) -> None:
    """Publish an environment version (the local registry by default). Same content again is a no-op."""
    from envhub.registry.config import configured_registry, open_registry
    from envhub.registry.local import LocalRegistry

    location = configured_registry(registry)
    target = open_registry(location, writable=True) if location else LocalRegistry()
    if not hasattr(target, "publish"):
        raise RegistryError(f"{target.description} is read-only", hint="publish to a hub URL or a local folder")
    from envhub.registry.http import HubRegistry

    if private and not isinstance(target, HubRegistry):
        raise RegistryError(
            f"--private needs a hub; {target.description} has no access control",
            hint="publish with --registry http://HOST:PORT of an `envhub hub serve`",
        )
    with console.status(f"publishing {folder}"):
        entry, created = target.publish(folder, private=True) if private else target.publish(folder)
    from envhub.identity.manifest import load_manifest

    ref = load_manifest(folder).ref
    verb = "published" if created else "already published (same content, nothing to do):"
    console.print(f"{verb} [bold]{ref}[/] {entry.digest} to {target.description}", highlight=False)


def pull(
    env_id: str = typer.Argument(..., metavar="NAME[@SPEC]", help="e.g. arithmetic, acme/sql@^1.2, acme/sql@sha256:..."),
    registry: str = RegistryOpt,
) -> None:
    """Fetch a version into the local registry, checked against its sha256 (and envhub.lock, if any)."""
    from envhub.identity.ids import parse_env_id
    from envhub.registry.lockfile import active_lockfile, check_digest, pin
    from envhub.runtime.make import pull as pull_version

    parsed = parse_env_id(env_id)
    lock = active_lockfile()
    if lock is not None:
        parsed = pin(parsed, lock[1], lock[0])
    source = pull_source(registry)
    with console.status(f"pulling {parsed} from {source.description}"):
        if lock is not None:
            entry, version = source.resolve(parsed)
            check_digest(entry.full_name, version.version, version.digest, lock[1], lock[0])
        entry, version, created = pull_version(str(parsed), source=source)
    from envhub.registry import LocalRegistry

    where = LocalRegistry().folder(entry, version)
    verb = "pulled" if created else "up to date:"
    console.print(f"{verb} [bold]{entry.full_name}@{version.version}[/] {version.digest} -> {where}", highlight=False)


# --- reading -------------------------------------------------------------------------------------


def list_(
    registry: str = RegistryOpt,
    installed: bool = typer.Option(False, "--installed", help="What is installed on this machine, whatever registry is configured."),
) -> None:
    """List environments and versions: in the configured registry (as `info` and `publish` use it), else installed locally."""
    from envhub.registry import LocalRegistry
    from envhub.registry.config import configured_registry, open_registry

    if installed and registry:
        raise typer.BadParameter("--installed lists the local registry; pass it or --registry, not both", param_hint="--installed")
    location = None if installed else configured_registry(registry)
    target = open_registry(location) if location else LocalRegistry()
    index = target.index()
    if not index.environments:
        where = target.description
        nothing = f"nothing in {where}"
        hint = "" if location else "; try `envhub pull arithmetic` or `envhub publish FOLDER`"
        console.print(nothing + hint, highlight=False)
        return
    table = Table(title=target.description)
    for col in ("environment", "versions", "description"):
        table.add_column(col, overflow="fold")
    for key in sorted(index.environments):
        entry = index.environments[key]
        from envhub.identity.index import sort_versions

        flag = " [dim](private)[/]" if entry.private else ""
        table.add_row(key + flag, ", ".join(sort_versions(entry.versions)), entry.description)
    console.print(table)


def info(
    env_id: str = typer.Argument(..., metavar="NAME", help="Environment name or namespace/name."),
    registry: str = RegistryOpt,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Versions, digests, description, tags and where each version is installed."""
    from envhub.identity.ids import parse_env_id
    from envhub.identity.index import sort_versions
    from envhub.registry import LocalRegistry

    local = LocalRegistry()
    registry_, entry = _find_entry(read_registries(registry), parse_env_id(env_id))
    try:
        installed = local.index().environments.get(entry.full_name)
    except RegistryError:
        installed = None
    rows = []
    for v in sort_versions(entry.versions):
        ver = entry.versions[v]
        where = ""
        if installed is not None and v in installed.versions and installed.versions[v].digest == ver.digest:
            folder = local.folder(installed, installed.versions[v])
            where = str(folder) if folder.is_dir() else ""
        elif hasattr(registry_, "folder"):
            folder = registry_.folder(entry, ver)
            where = str(folder) if folder is not None and Path(folder).is_dir() else ""
        built = installed.versions.get(v) if installed is not None and v in installed.versions else ver  # record_image writes here
        rows.append({"version": v, "digest": ver.digest, "size": ver.size, "license": ver.license, "installed_at": where or None,
                     "dependencies": _dependencies(where), "image": built.image or ver.image,
                     "image_digest": built.image_digest or ver.image_digest})  # fmt: skip
    if as_json:
        data = {"name": entry.full_name, "registry": registry_.description, "description": entry.description,
                "tags": entry.tags, "private": entry.private, "versions": rows}
        typer.echo(json.dumps(data, indent=2))
        return
    console.print(f"[bold]{entry.full_name}[/]  ({registry_.description})", highlight=False)
    if entry.description:
        console.print(entry.description, highlight=False)
    if entry.tags:
        console.print("tags: " + ", ".join(entry.tags), highlight=False)
    if entry.private:
        console.print("private: yes")
    table = Table()
    for col in ("version", "digest", "size", "license", "installed at", "dependencies", "image"):
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(row["version"], row["digest"], str(row["size"] or ""), row["license"] or "", row["installed_at"] or "",
                      ", ".join(row["dependencies"] or []), row["image"] or "")  # fmt: skip
    console.print(table)


def _dependencies(folder: str) -> list[str] | None:
    """The ``dependencies`` of the manifest in an installed version's folder (None when not installed)."""
    if not folder:
        return None
    from envhub.identity.manifest import load_manifest

    try:
        return list(load_manifest(folder).dependencies)
    except EnvhubError:
        return None


def versions(
    env_id: str = typer.Argument(..., metavar="NAME", help="Environment name or namespace/name."),
    registry: str = RegistryOpt,
) -> None:
    """The versions of an environment, oldest first, with their digests."""
    from envhub.identity.ids import parse_env_id
    from envhub.identity.index import sort_versions

    _, entry = _find_entry(read_registries(registry), parse_env_id(env_id))
    for v in sort_versions(entry.versions):
        console.print(f"{entry.full_name}@{v}  {entry.versions[v].digest}", highlight=False)


def search(
    text: str = typer.Argument(..., help="Words to find in names, descriptions and tags."),
    registry: str = RegistryOpt,
) -> None:
    """Search environments by name, description and tags."""
    from envhub.identity.index import sort_versions
    from envhub.registry.base import search_index

    seen: set[str] = set()
    table = Table()
    for col in ("environment", "latest", "tags", "description"):
        table.add_column(col, overflow="fold")
    for source in read_registries(registry):
        for entry in search_index(source.index(), text):
            if entry.full_name in seen:
                continue
            seen.add(entry.full_name)
            table.add_row(entry.full_name, sort_versions(entry.versions)[-1] if entry.versions else "", ", ".join(entry.tags), entry.description)
    if not seen:
        console.print(f"no environment matches {text!r}", highlight=False)
        return
    console.print(table)


# --- lock, export --------------------------------------------------------------------------------


def lock(
    env_ids: list[str] = typer.Argument(..., metavar="NAME[@SPEC]...", help="Environments to pin."),
    registry: str = RegistryOpt,
    output: Path = typer.Option(Path("envhub.lock"), "--output", "-o", help="Lockfile to write (entries for other names are kept)."),
) -> None:
    """Write envhub.lock pinning each environment's version, artifact digest and image digest."""
    from envhub.registry.lockfile import LockEntry, Lockfile, read_lockfile, write_lockfile
    from envhub.registry import LocalRegistry

    lockfile = read_lockfile(output) if output.is_file() else Lockfile()
    sources = read_registries(registry)
    local = LocalRegistry()
    for env_id in env_ids:
        source, entry, version = _resolve_first(sources, env_id)
        image_digest = version.image_digest
        if image_digest is None:  # a local build records the image beside the version
            try:
                have = local.index().environments.get(entry.full_name)
                if have and version.version in have.versions and have.versions[version.version].digest == version.digest:
                    image_digest = have.versions[version.version].image_digest
            except RegistryError:
                pass
        requested = env_id.partition("@")[2] or "latest"
        label = getattr(source, "url", None) or getattr(source, "base_url", None) or source.description
        lockfile.environments[entry.full_name] = LockEntry(
            version=version.version, digest=version.digest, requested=requested, image_digest=image_digest, registry=label
        )
        console.print(f"locked [bold]{entry.full_name}@{version.version}[/] {version.digest}", highlight=False)
    write_lockfile(output, lockfile)
    console.print(f"wrote {output}", highlight=False)


def export_static(
    out_dir: Path = typer.Argument(..., metavar="DIR", help="Folder to write registry.json and artifacts/ into."),
    registry: str = typer.Option(None, "--registry", "-r", help="Registry to export (default: the local registry)."),
) -> None:
    """Write a static registry (registry.json + artifacts) that any web server or bucket can serve."""
    from envhub.registry.static import export_static as export

    from envhub.registry import LocalRegistry
    from envhub.registry.config import open_registry

    source = open_registry(registry) if registry else LocalRegistry()
    with console.status(f"exporting {source.description}"):
        index = export(source, out_dir)
    count = sum(len(e.versions) for e in index.environments.values())
    console.print(f"wrote {count} version(s) to {out_dir}; serve it and point envhub at it with --registry URL", highlight=False)


# --- accounts ------------------------------------------------------------------------------------


def login(
    url: str = typer.Argument(..., help="The hub's URL, e.g. http://127.0.0.1:8000"),
    token: str = typer.Option(None, "--token", help="The token (prompted for when omitted)."),
    default: bool = typer.Option(False, "--default", help="Also make this the configured registry."),
) -> None:
    """Store a token for a hub in $ENVHUB_HOME/credentials.json (readable only by you)."""
    from envhub.registry.config import normalize_url, save_token, write_config
    from envhub.registry.http import HubRegistry

    if token is None:
        token = typer.prompt("token", hide_input=True)
    url = normalize_url(url)
    hub = HubRegistry(url, token=token)
    who = hub.whoami()  # a bad token fails here, before it is stored
    path = save_token(url, token)
    if default:
        write_config({"registry": url})
    console.print(f"logged in to {url} as [bold]{who['user']}[/] (scope {who['scope']}); token stored in {path}", highlight=False)


def logout(url: str = typer.Argument(..., help="The hub's URL.")) -> None:
    """Forget the token stored for a hub."""
    from envhub.registry.config import forget_token

    console.print("token removed" if forget_token(url) else f"no token stored for {url}")


# --- packs, signing, audit -----------------------------------------------------------------------


def pack_keys(
    out: Path = typer.Option(None, "--out", help="Folder for the keys (default: $ENVHUB_HOME/keys)."),
) -> None:
    """Make an ed25519 key pair for signing packs."""
    from envhub.paths import envhub_home
    from envhub.registry.packs import generate_keys, key_id

    private, public, b64 = generate_keys(out or envhub_home() / "keys")
    console.print(f"private key: {private} (keep it secret)\npublic key:  {public}\n  {b64}  (key id {key_id(b64)})", highlight=False)
    console.print("labs verify your packs with ENVHUB_PACK_PUBLIC_KEY=" + b64, highlight=False)


def _read_pack(path: Path) -> dict[str, Any]:
    from envhub.registry.packs import validate_pack

    try:
        return validate_pack(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise RegistryError(f"{path} not found", hint="write a pack file with `envhub pack create`") from None
    except ValueError as exc:
        raise RegistryError(f"{path} is not JSON: {exc}", hint="write a pack file with `envhub pack create`") from exc


def sign(
    pack_file: Path = typer.Argument(..., help="Pack file written by `envhub pack create`."),
    key: Path = typer.Option(None, "--key", help="Private key (default: $ENVHUB_HOME/keys/pack-signing.pem)."),
) -> None:
    """Sign a pack file with your ed25519 key (in place)."""
    from envhub.identity.artifact import write_atomic
    from envhub.paths import envhub_home
    from envhub.registry.packs import sign_pack

    signed = sign_pack(_read_pack(pack_file), key or envhub_home() / "keys" / "pack-signing.pem")
    write_atomic(pack_file, (json.dumps(signed, indent=2, sort_keys=True) + "\n").encode())
    console.print(f"signed {pack_file} with key {signed['key_id']}", highlight=False)


def audit_log(
    namespace: str = typer.Argument(..., help="Your namespace (user or organisation)."),
    registry: str = RegistryOpt,
    limit: int = typer.Option(100, help="How many events, newest first."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON lines."),
) -> None:
    """Who pulled your environments, and when (hub only)."""
    events = hub_registry(registry).audit_log(namespace, limit=limit)
    if as_json:
        for event in events:
            typer.echo(json.dumps(event, sort_keys=True))
        return
    table = Table(title=f"audit log of {namespace}")
    for col in ("time", "user", "action", "subject", "digest"):
        table.add_column(col, overflow="fold")
    for e in events:
        table.add_row(e["at"], e.get("user") or "(anonymous)", e["action"], e["subject"], e.get("digest") or "")
    console.print(table)


class _PackGroup(TyperGroup):
    """``envhub pack``: packs only. An environment folder given here meant the artifact command."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and Path(args[0]).is_dir():
            raise RegistryError(
                f"`envhub pack` manages packs (bundles sold to labs), and {args[0]!r} is a folder",
                hint=f"write the environment's artifact with `envhub archive {args[0]}`",
            )
        return super().parse_args(ctx, args)


def visibility(
    env: str = typer.Argument(..., metavar="NAMESPACE/NAME"),
    level: str = typer.Argument(..., metavar="public|private"),
    registry: str = RegistryOpt,
) -> None:
    """Make one of your environments on a hub public or private."""
    if level not in ("public", "private"):
        raise RegistryError(f"{level!r} is not `public` or `private`", hint=f"envhub visibility {env} private")
    ns, name = _split_pack(env)
    hub_registry(registry).set_visibility(ns, name, private=level == "private")
    console.print(f"{env} is now {level}", highlight=False)


pack_app = typer.Typer(
    cls=_PackGroup,
    help="Packs: named, versioned bundles of environment versions with a license, sold to labs.",
    no_args_is_help=True,
)


@pack_app.command("create")
def pack_create(
    ref: str = typer.Argument(..., metavar="NAMESPACE/NAME@VERSION", help="The pack's identity."),
    envs: list[str] = typer.Option(..., "--env", "-e", help="An environment version to include (repeat)."),
    license_text: str = typer.Option(None, "--license", help="License text."),
    license_file: Path = typer.Option(None, "--license-file", help="File holding the license text."),
    description: str = typer.Option("", help="One line on what the pack is for."),
    registry: str = RegistryOpt,
    out: Path = typer.Option(None, "--out", "-o", help="Pack file to write (default NAME-VERSION.pack.json)."),
) -> None:
    """Write a pack file, resolving each environment to its exact version and digest."""
    from envhub.identity.artifact import write_atomic
    from envhub.identity.ids import SEMVER_RE, parse_env_id
    from envhub.registry.packs import validate_pack

    pid = parse_env_id(ref)
    if pid.namespace is None or pid.version is None or not SEMVER_RE.match(pid.version):
        raise RegistryError(f"pack id {ref!r} must be namespace/name@x.y.z", hint="e.g. `envhub pack create acme/math@1.0.0 -e acme/algebra@^1`")
    if license_file is not None:
        license_text = license_file.read_text(encoding="utf-8")
    if not license_text:
        raise RegistryError("a pack needs a license", hint="pass --license TEXT or --license-file FILE")
    sources = read_registries(registry)
    items = []
    for env_id in envs:
        _, entry, version = _resolve_first(sources, env_id)
        items.append({"ref": f"{entry.full_name}@{version.version}", "digest": version.digest})
    pack = validate_pack(
        {"namespace": pid.namespace, "name": pid.name, "version": pid.version, "license": license_text,
         "description": description, "environments": items}
    )
    path = out or Path(f"{pid.name}-{pid.version}.pack.json")
    write_atomic(path, (json.dumps(pack, indent=2, sort_keys=True) + "\n").encode())
    console.print(f"wrote {path} with {len(items)} environment(s); next: `envhub sign {path}` and `envhub pack publish {path}`", highlight=False)


@pack_app.command("publish")
def pack_publish(
    pack_file: Path = typer.Argument(..., help="Pack file (signed or not)."),
    registry: str = RegistryOpt,
) -> None:
    """Publish a pack file to a hub."""
    from envhub.registry.packs import pack_ref

    pack = _read_pack(pack_file)
    _, created = hub_registry(registry).publish_pack(pack)
    verb = "published" if created else "already published (same content):"
    console.print(f"{verb} pack [bold]{pack_ref(pack)}[/]" + (" (signed)" if pack.get("signature") else ""), highlight=False)


def _split_pack(ref: str) -> tuple[str, str]:
    ns, sep, name = ref.partition("/")
    if not sep or not ns or not name or "@" in name:
        raise RegistryError(f"{ref!r} must be namespace/name", hint="e.g. `envhub pack grant acme/math-suite lab-user`")
    return ns, name


@pack_app.command("grant")
def pack_grant(
    pack: str = typer.Argument(..., metavar="NAMESPACE/PACK"),
    user: str = typer.Argument(..., help="The lab's user name on the hub."),
    registry: str = RegistryOpt,
) -> None:
    """Entitle a lab's user to pull every environment in the pack."""
    ns, name = _split_pack(pack)
    hub_registry(registry).grant(ns, name, user)
    console.print(f"granted {pack} to {user}", highlight=False)


@pack_app.command("revoke")
def pack_revoke(
    pack: str = typer.Argument(..., metavar="NAMESPACE/PACK"),
    user: str = typer.Argument(...),
    registry: str = RegistryOpt,
) -> None:
    """Withdraw a lab's entitlement to a pack."""
    ns, name = _split_pack(pack)
    hub_registry(registry).revoke(ns, name, user)
    console.print(f"revoked {pack} from {user}", highlight=False)


@pack_app.command("allow")
def pack_allow(
    env: str = typer.Argument(..., metavar="NAMESPACE/ENV", help="One of your environments."),
    namespace: str = typer.Argument(..., help="The namespace whose packs may sell it."),
    registry: str = RegistryOpt,
) -> None:
    """Let another namespace's packs sell one of your environments (withdrawn when you make it private)."""
    ns, name = _split_pack(env)
    hub_registry(registry).allow_bundling(f"{ns}/{name}", namespace)
    console.print(f"packs of {namespace} may now sell {env}", highlight=False)


@pack_app.command("disallow")
def pack_disallow(
    env: str = typer.Argument(..., metavar="NAMESPACE/ENV"),
    namespace: str = typer.Argument(...),
    registry: str = RegistryOpt,
) -> None:
    """Stop another namespace's packs selling one of your environments; their grants stop returning it."""
    ns, name = _split_pack(env)
    hub_registry(registry).allow_bundling(f"{ns}/{name}", namespace, allowed=False)
    console.print(f"packs of {namespace} may no longer sell {env}", highlight=False)


@pack_app.command("pull")
def pack_pull(
    ref: str = typer.Argument(..., metavar="NAMESPACE/PACK[@VERSION]"),
    registry: str = RegistryOpt,
    public_key: str = typer.Option(None, "--public-key", help="Verify the signature with this key (base64 or .pub file)."),
    allow_unsigned: bool = typer.Option(False, "--allow-unsigned", help="Pull a pack that is unsigned or does not verify."),
) -> None:
    """Pull every environment of a pack, once its signature verifies with the publisher's pinned key."""
    from envhub.identity.ids import match_version
    from envhub.runtime.make import pull as pull_version
    from envhub.registry.packs import check_pulled_pack

    ns, name = _split_pack(ref.partition("@")[0])
    hub = hub_registry(registry)
    versions_ = hub.pack(ns, name)
    spec = ref.partition("@")[2] or None
    chosen = match_version(spec, list(versions_))
    if chosen is None:
        raise VersionNotFoundError(f"{ns}/{name}", spec or "latest", sorted(versions_))
    pack = versions_[chosen].model_dump(mode="json")
    said = check_pulled_pack(pack, namespace=ns, name=name, version=chosen, public_key=public_key, allow_unsigned=allow_unsigned)
    console.print(said, highlight=False)
    for item in pack["environments"]:
        env_ref, digest = item["ref"], item["digest"]
        entry, version, created = pull_version(f"{env_ref.partition('@')[0]}@{digest}", source=hub)
        console.print(f"{'pulled' if created else 'up to date:'} {entry.full_name}@{version.version} {version.digest}", highlight=False)


def register(app: typer.Typer) -> None:
    for command in (publish, pull, info, versions, search, lock, login, logout, sign, visibility):
        app.command()(command)
    app.command("list")(list_)
    app.command("export-static")(export_static)
    app.command("pack-keys")(pack_keys)
    app.command("audit-log")(audit_log)
    app.add_typer(pack_app, name="pack")
