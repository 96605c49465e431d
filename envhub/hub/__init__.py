"""The hub server (``envhub hub serve``): publishing, pulling, tokens, namespaces, private
environments, packs with entitlements and signatures, and an audit log of pulls.

Needs the ``hub`` extra (``pip install 'envhub[hub]'``). The pieces: :mod:`.models` and
:mod:`.migrations` (the schema, SQLite by default, PostgreSQL by URL), :mod:`.storage` (artifact
blobs; local disk by default), :mod:`.service` (the rules), :mod:`.app` (the FastAPI app) and
:mod:`.page` (the read-only front page).
"""

from envhub.hub.app import HubSettings, build_hub, create_app

__all__ = ["HubSettings", "build_hub", "create_app"]
