"""Write the folder an import describes: ``envhub.toml``, a thin module, README, tests, the kind's files."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envhub.authoring.importers import kind_module
from envhub.authoring.importers.common import Generated, Source, installed_source, parse_options
from envhub.authoring.scaffold import contract_tests
from envhub.errors import EnvhubError, ImportSourceError, InvalidEnvIdError
from envhub.identity.ids import NAME_RE, Version
from envhub.identity.manifest import Manifest

MAX_NAME = 64


@dataclass(frozen=True)
class ImportResult:
    """Where the environment was written, its manifest, and the source it pins."""

    folder: Path
    manifest: Manifest
    source: Source
    command: str


def import_environment(
    kind: str,
    source: str,
    *,
    output: str | Path,
    name: str | None = None,
    version: str = "0.1.0",
    options: dict[str, Any] | None = None,
    force: bool = False,
) -> ImportResult:
    """Import ``source`` of ``kind`` into the new environment folder ``output``.

    ``name`` is ``NAME`` or ``NAMESPACE/NAME`` (default: the kind's own name in namespace ``local``);
    ``options`` are the kind's options (``{"tasks": "a,b"}``, as given on the command line, or
    already parsed). ``output`` must not exist or be empty, unless ``force``.
    """
    module = kind_module(kind)
    parsed = parse_options(kind, module.OPTIONS, dict(options or {}))
    namespace, env_name = _split_name(name)
    try:
        Version.parse(version)
    except EnvhubError as exc:
        raise ImportSourceError(kind, source, f"--version {version!r}: {exc}") from None
    folder = Path(output)
    if folder.exists() and (not folder.is_dir() or (any(folder.iterdir()) and not force)):
        raise ImportSourceError(kind, source, f"{folder} exists and is not an empty folder",
                                hint="choose a new folder with -o, or pass --force to write into it")  # fmt: skip
    resolve = getattr(module, "resolve_source", None)  # kinds whose source is no package (a URL, an image, a folder)
    if resolve is not None:
        installed = resolve(source)
    else:
        installed = installed_source(kind, source, package=module.PACKAGE, module=module.MODULE, supported=module.SUPPORTED)
    generated: Generated = module.build(installed, parsed)
    env_name = env_name or generated.name[:MAX_NAME].rstrip("-._")
    command = _command(kind, source, module.OPTIONS, parsed, namespace, env_name, version, folder)
    files = _render(kind, installed, generated, namespace=namespace, name=env_name, version=version, command=command)
    manifest = Manifest.from_toml(files["envhub.toml"], source=str(folder / "envhub.toml"))  # what was written parses
    for rel, text in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):  # a copied source file (a Harbor task's), as it is
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
    return ImportResult(folder=folder, manifest=manifest, source=installed, command=command)


def _split_name(name: str | None) -> tuple[str, str | None]:
    if not name:
        return "local", None
    namespace, _, env_name = name.rpartition("/")
    namespace = namespace or "local"
    for label, value in (("namespace", namespace), ("name", env_name)):
        if not NAME_RE.match(value):
            raise InvalidEnvIdError(name, f"the {label} must use lowercase letters, digits, '.', '_' and '-'")
    return namespace, env_name


def _module_name(name: str) -> str:
    module = name.replace("-", "_").replace(".", "_") + "_env"
    return module if module[0].isalpha() else f"env_{module}"


def _command(kind, source, options, parsed, namespace, name, version, folder) -> str:
    """The command line that writes this folder again: the README records it."""
    parts = ["envhub", "import", kind, source, "--name", f"{namespace}/{name}", "--version", version]
    for option in options:
        value = parsed[option.key]
        if value == option.default or value in (None, [], False):
            continue
        if option.flag:
            parts.append(f"--{option.name}")
        for item in value if option.repeat else [value]:
            shown = ",".join(item) if isinstance(item, list) else _shown_value(item)
            parts += [f"--{option.name}", shown]
    parts += ["-o", str(folder)]
    return " ".join(shlex.quote(p) for p in parts)


def _shown_value(value: Any) -> str:
    if isinstance(value, tuple) and len(value) == 3:  # TASK.FIELD=VALUE settings
        task, field, raw = value
        return f"{task}.{field}={raw if isinstance(raw, str) else json.dumps(raw)}"
    return str(value)


def _literal(value: Any, indent: str = "") -> str:
    """``value`` (dicts, lists, scalars) as Python source, one key per line where it does not fit on one."""
    flat = repr(value)
    if len(flat) <= 88 - len(indent) or not isinstance(value, (dict, list)) or not value:
        return flat
    inner = indent + "    "
    if isinstance(value, dict):
        items = [f"{inner}{k!r}: {_literal(v, inner)}," for k, v in value.items()]
        return "{\n" + "\n".join(items) + f"\n{indent}}}"
    items = [f"{inner}{_literal(v, inner)}," for v in value]
    return "[\n" + "\n".join(items) + f"\n{indent}]"


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def _render(kind: str, source: Source, g: Generated, *, namespace: str, name: str, version: str, command: str) -> dict[str, str]:
    module = _module_name(name)
    manifest = "\n".join([
        f"namespace = {json.dumps(namespace)}",
        f"name = {json.dumps(name)}",
        f"version = {json.dumps(version)}",
        f"description = {json.dumps(g.description)}",
        f'entrypoint = "{module}:make_env"',
        f"license = {json.dumps(g.license or _license(source))}",
        f"tags = {_toml_list(list(dict.fromkeys(g.tags)))}",
        f"max_turns = {g.max_turns}",
        f"dependencies = {_toml_list([source.requirement] if source.requirement else [])}   # the imported source, pinned",
        "",
        "[dataset]",
        'kind = "generated"',
        'splits = ["train", "test"]',
        "",
        "[rubric]",
        f"summary = {json.dumps(g.rubric_summary)}",
        "",
        "[limits]",
        f"memory_mb = {g.memory_mb}",
        "cpus = 1.0",
        f"step_timeout_s = {g.step_timeout_s:g}",
        "",
        *(["[runtime]", f"python = {json.dumps(g.python)}   # the source's own interpreter", ""] if g.python else []),
    ])  # fmt: skip
    settings = _literal(g.settings)
    folder_arg = ", folder=Path(__file__).resolve().parent" if g.pass_folder else ""
    code = f'''"""{name}: imported from {source.label} by `envhub import {kind}` (see README.md).

The environment itself is envhub's adapter, {g.class_name}; this module only holds what was imported.
"""

from __future__ import annotations
{"" if not g.pass_folder else chr(10) + "from pathlib import Path" + chr(10)}
from {g.runtime_module} import {g.class_name}

SOURCE = {json.dumps(source.requirement or source.text)}
SETTINGS = {settings}


def make_env(**kwargs) -> {g.class_name}:
    """The imported environment; ``kwargs`` override SETTINGS (and take max_turns, render_mode)."""
    return {g.class_name}(**{{**SETTINGS, **kwargs}}{folder_arg})
'''
    readme = f"""# {namespace}/{name}

{g.description}

Imported from **{source.label}** ({source.pinned_where}) with:

```bash
{command}
```

{g.readme}

## Use

```bash
envhub validate .          # the contract checks
envhub audit .             # what reward-hacking probes earn
envhub eval . -n 20        # a model on the test split
envhub train . --algo cispo
```

{_requirement_note(source)}"""
    tests = contract_tests(
        g.tests, docstring=f"Written by `envhub import {kind}`: the folder passes validate and the audit, and plays.", audited=True
    )
    files = {"envhub.toml": manifest, f"{module}.py": code, "README.md": readme, f"tests/test_{module}.py": tests}
    files.update(g.files)
    return files


def _requirement_note(source: Source) -> str:
    if not source.requirement:
        return ""
    return f"""`{source.requirement}` must be installed where the environment loads (in-process and the process
runtime check it and name the pip command when it is not); `envhub build` installs it into the
docker image.
"""


def _license(source: Source) -> str:
    """The source's own license where its metadata names one plainly, else Apache-2.0 (envhub's)."""
    import importlib.metadata

    meta = importlib.metadata.metadata(source.package)
    for value in (meta.get("License-Expression"), meta.get("License")):
        if value and len(value) <= 40 and "\n" not in value:
            return value
    for classifier in meta.get_all("Classifier") or []:
        if classifier == "License :: OSI Approved :: Apache Software License":
            return "Apache-2.0"
        if classifier == "License :: OSI Approved :: MIT License":
            return "MIT"
    return "Apache-2.0"
