"""Per-process resources: the upstream client, the download client, the shared gate.

Created on first use in each process (a prefork child rebuilds them after the fork, since
children must not share the parent's sockets) and reused by every task it runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import httpx
from pydantic import SecretStr
from redis import Redis

from .config import Settings, get_settings
from .storage import ResultStore, open_store
from .upstream.client import ModellixClient
from .upstream.gate import UpstreamGate


class ConfigurationError(RuntimeError):
    """The worker cannot run with the settings it was given."""


@dataclass
class Runtime:
    """Everything a task needs besides the database session."""

    settings: Settings
    upstream: ModellixClient
    downloads: httpx.Client
    gate: UpstreamGate
    redis: Redis
    webhooks: httpx.Client
    store: ResultStore | None  # where result images are copied (None: not copied)

    def close(self) -> None:
        """Close the connection pools."""
        self.upstream.close()
        self.downloads.close()
        self.webhooks.close()


_runtime: tuple[int, Runtime] | None = None


def get_runtime() -> Runtime:
    """This process's runtime, built on first use."""
    global _runtime
    if _runtime is None or _runtime[0] != os.getpid():
        _runtime = (os.getpid(), build_runtime(get_settings()))
    return _runtime[1]


def reset_runtime() -> None:
    """Forget this process's runtime (used after fork and in tests)."""
    global _runtime
    if _runtime is not None and _runtime[0] == os.getpid():
        _runtime[1].close()
    _runtime = None


def build_runtime(settings: Settings) -> Runtime:
    """Build the clients for ``settings``."""
    key = settings.modellix_api_key
    if key is None or not key.get_secret_value().strip():
        raise ConfigurationError("MODELLIX_API_KEY is not set")
    redis = Redis.from_url(settings.limiter_redis_url, socket_timeout=10)
    return Runtime(
        settings=settings,
        upstream=ModellixClient(
            settings.modellix_base_url,
            SecretStr(key.get_secret_value().strip()),
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
        ),
        # Result files are public URLs on another host: this client never sends the key.
        downloads=httpx.Client(
            timeout=httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout),
            follow_redirects=True,
        ),
        gate=UpstreamGate(redis, rpm=settings.upstream_rpm),
        redis=redis,
        # Webhooks go to producers' hosts: no credentials, no redirects followed, no
        # environment proxies (the key is never sent anywhere but the upstream).
        webhooks=httpx.Client(
            timeout=httpx.Timeout(settings.webhook_timeout),
            follow_redirects=False,
            trust_env=False,
        ),
        store=open_store(settings),
    )
