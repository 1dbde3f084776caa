"""Faithful simulator of the Modellix async image API (MiniMax image-01-live i2i)."""

from simulator.app import create_app
from simulator.config import Faults, SimConfig
from simulator.server import serve

__all__ = ["Faults", "SimConfig", "create_app", "serve"]
