"""What names an environment version: :mod:`~envhub.identity.ids` (the one name and version grammar),
:mod:`~envhub.identity.manifest` (``envhub.toml``), :mod:`~envhub.identity.artifact` (the reproducible
``tar.gz`` and its sha256) and :mod:`~envhub.identity.index` (the registry index format)."""
