"""The hub's front page: a read-only, server-rendered list of public environments and packs."""

from __future__ import annotations

from html import escape

from envhub.identity.index import Index, sort_versions

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
h1{font-size:1.6rem}h2{margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.35rem .5rem;border-bottom:1px solid #eee;vertical-align:top}
code{font-size:.85em;background:#f4f4f4;padding:0 .2em}.tag{background:#eef;border-radius:3px;padding:0 .3em;margin-right:.2em;font-size:.85em}
.muted{color:#777}
"""


def render_index_page(index: Index) -> str:
    envs = [e for e in index.environments.values() if not e.private]
    rows = []
    for e in sorted(envs, key=lambda e: e.full_name):
        versions = sort_versions(e.versions)
        latest = e.versions[versions[-1]] if versions else None
        tags = "".join(f'<span class="tag">{escape(t)}</span>' for t in e.tags)
        rows.append(
            f"<tr><td><strong>{escape(e.full_name)}</strong><br>{tags}</td><td>{escape(e.description)}</td>"
            f"<td>{escape(', '.join(reversed(versions)))}</td>"
            f"<td><code>envhub pull {escape(e.full_name)}</code>"
            + (f'<br><span class="muted">{escape(latest.digest[:19])}…</span>' if latest else "")
            + "</td></tr>"
        )
    pack_rows = []
    for key in sorted(index.packs):
        versions = index.packs[key]
        for v in reversed(sort_versions(versions)):
            p = versions[v]
            contents = ", ".join(escape(item.get("ref", "")) for item in p.environments)
            signed = "signed" if p.signature else "unsigned"
            license_line = escape((p.license or "").strip().splitlines()[0] if (p.license or "").strip() else "")
            pack_rows.append(
                f"<tr><td><strong>{escape(key)}</strong>@{escape(v)}</td><td>{contents}</td>"
                f"<td>{license_line}</td><td>{signed}</td></tr>"
            )
    env_table = (
        "<table><tr><th>environment</th><th>description</th><th>versions</th><th>pull</th></tr>" + "".join(rows) + "</table>"
        if rows else '<p class="muted">No public environments yet.</p>'
    )
    pack_table = (
        "<table><tr><th>pack</th><th>environments</th><th>license</th><th>signature</th></tr>" + "".join(pack_rows) + "</table>"
        if pack_rows else '<p class="muted">No packs yet.</p>'
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1"><title>envhub hub</title>'
        f"<style>{_STYLE}</style></head><body><h1>envhub hub</h1>"
        f'<p class="muted">{len(rows)} public environment(s), {len(pack_rows)} pack version(s). '
        'API: <a href="/docs">/docs</a>, <a href="/openapi.json">/openapi.json</a>, index: <a href="/registry.json">/registry.json</a></p>'
        f"<h2>Environments</h2>{env_table}<h2>Packs</h2>{pack_table}</body></html>"
    )
