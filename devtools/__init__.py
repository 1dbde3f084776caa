"""Development tooling: the demo, the benchmarks and the process supervisor the tests use.

Not part of the production wheel or image; run it from a checkout as ``python -m devtools``.
"""
