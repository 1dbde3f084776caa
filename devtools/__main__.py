"""``python -m devtools``: the demo and the benchmarks."""

from .cli import main

main()
