"""`python -m simulator`: serve with configuration from SIM_* environment variables."""

from simulator.server import main

main()
