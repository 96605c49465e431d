"""``python -m trainers ENV... --algo cispo ...``: the same as ``envhub train``."""

from trainers.cli import main

main()
