"""Flower, with its ``/metrics`` behind the same authentication as every other page.

Flower 2.2's ``Metrics`` handler (``flower/views/monitor.py``) never asks who is calling:
its pages and API check ``current_user`` (``@web.authenticated``, or the API handlers'
``prepare``), the metrics handler does not, so ``/metrics`` answers anyone who can reach
the port, basic auth or not. :func:`protect_metrics` swaps it, in the URL table Flower
builds its application from, for a subclass that asks for the current user first (basic
auth answers 401 with ``WWW-Authenticate``, as for any other page). ``/healthcheck`` stays
open: it says ``OK`` and nothing else, which is what a load balancer's probe needs.
"""

from __future__ import annotations

from typing import Any

from tornado.web import HTTPError


def protect_metrics() -> None:
    """Make Flower's ``/metrics`` require the configured authentication (call it before
    Flower builds its application)."""
    from flower import urls
    from flower.views.monitor import Metrics

    class AuthenticatedMetrics(Metrics):  # type: ignore[misc]
        """Flower's metrics, for authenticated callers only."""

        def prepare(self) -> Any:
            # get_current_user raises 401 itself for missing or wrong basic credentials;
            # with OAuth (no basic auth) an anonymous caller has no user.
            if not self.current_user:
                raise HTTPError(401)
            return super().prepare()

    replaced = 0
    for index, handler in enumerate(urls.handlers):
        if isinstance(handler, tuple) and handler[1] is Metrics:
            urls.handlers[index] = (handler[0], AuthenticatedMetrics, *handler[2:])
            replaced += 1
    if replaced != 1:
        # A Flower whose URL table changed: refuse to start rather than serve metrics openly.
        raise RuntimeError("Flower's /metrics route was not found; cannot protect it")
