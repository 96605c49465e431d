"""``python -m trainers ENV... --algo cispo ...``: the same as ``envhub train``."""

from trainers.grpo import cli_main

raise SystemExit(cli_main())
