"""``python -m envhub``: the same as the ``envhub`` command."""

from envhub.cli import main

main()
