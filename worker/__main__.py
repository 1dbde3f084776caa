"""``python -m worker`` is the ``imagegen`` command."""

from .cli import main

main()
