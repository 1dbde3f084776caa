"""Which worker nodes are alive, and which jobs' next steps each one holds.

A Celery worker keeps the messages it took in its own memory: every poll waiting for its
countdown, every task running. Redis hands an unacknowledged message to another worker only
after the visibility timeout (ten minutes by default), so when a worker dies, the jobs whose
next steps it held stand still, keeping their upstream slots, until the sweeper finds them
late (a minute or more later).

So every worker node announces itself. Each second (``heartbeat_seconds``) it renews a key
that lapses after ``node_timeout_seconds`` and records the ids of the jobs it holds a message
for, or is working on in a running task (an admission, an inline POST). A node whose key
lapsed is dead: the first other worker to notice claims it and sends ``imagegen.reclaim``,
which moves those jobs on at once, exactly as the sweeper would (``jobs.service.reclaim``).

Moving a job on twice is harmless, which is what makes a short timeout safe: a poll carries
the sequence number it expects, so of two poll chains only one goes on; a submit is sent
only while its POST has not started; and a POST already under way is left alone until its
answer can no longer come (``jobs.take_held``). A node that was only frozen, or is draining
at a warm shutdown, finds its poll messages stale and records its POSTs' answers. Each
worker process is one node (a restarted worker does not hold what it held before it died).

With ``--pool prefork`` the jobs a task admitted in a child process are not announced (the
parent reads only its own messages); those fall back to the sweeper. The default pool is
threads.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any, Final

from celery import bootsteps
from celery.signals import task_received
from celery.worker import state
from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from api_schema import names

from .config import get_settings
from .logs import get_logger

log = get_logger("imagegen.presence")

#: Every incarnation that announced itself and has not been reclaimed.
NODES_KEY: Final = "imagegen:presence:nodes"
#: How long a dead node's list of held jobs is kept if nobody reclaims it (a safety net;
#: the sweeper finds those jobs anyway).
HOLDS_TTL_MS: Final = 24 * 3600 * 1000


def alive_key(node: str) -> str:
    return f"imagegen:presence:{node}:alive"


def holds_key(node: str) -> str:
    return f"imagegen:presence:{node}:holds"


def claim_key(node: str) -> str:
    return f"imagegen:presence:{node}:reclaim"


def incarnation(hostname: str) -> str:
    """A node name for one worker process (a restarted worker does not hold what it held
    before it died, so it is another node)."""
    return f"{hostname}~{uuid.uuid4().hex[:12]}"


# --- jobs a running task works on (besides the messages the worker holds) -----------------

_lock = threading.Lock()
_working: dict[int, set[str]] = {}


def hold(job_ids: Iterable[str]) -> None:
    """Count ``job_ids`` as held by this node until the running task ends (:func:`release`):
    jobs it admitted, whose messages it publishes when it ends."""
    with _lock:
        _working.setdefault(threading.get_ident(), set()).update(job_ids)


def release() -> None:
    """The running task ended: what it published is in the broker now."""
    with _lock:
        _working.pop(threading.get_ident(), None)


def worked_on() -> set[str]:
    """Every job a running task of this process works on."""
    with _lock:
        return set().union(*_working.values()) if _working else set()


# --- the node's announcements ------------------------------------------------------------------


class Node:
    """One worker incarnation's presence in Redis."""

    def __init__(self, redis: Redis, node: str, *, timeout: float) -> None:
        self.redis = redis
        self.node = node
        self.timeout_ms = max(1000, int(timeout * 1000))
        self._written: set[str] = set()
        self._failing_since: float | None = None
        self._beats = 0

    def note(self, job_id: str) -> None:
        """Record at once that this node holds a job's message (one with a countdown, which
        may wait here for seconds): a death before the next heartbeat must not hide it."""
        with _lock:
            if job_id in self._written:
                return
            self._written.add(job_id)
        try:
            self.redis.hset(holds_key(self.node), job_id, "1")
        except RedisError:
            with _lock:
                self._written.discard(job_id)

    def beat(self, held: set[str]) -> list[str]:
        """Renew this node's key, record what it holds; return the dead nodes it claimed.

        Redis being away must not stop the worker: the heartbeat is skipped (peers may then
        take this node for dead, which is harmless) and tried again next time.
        """
        try:
            return self._beat(held)
        except RedisError as exc:
            now = time.monotonic()
            if self._failing_since is None or now - self._failing_since > 60:
                log.warning("presence.heartbeat_failed", error=str(exc))
                self._failing_since = now
            with _lock:
                self._written = set()  # rewrite everything once Redis is back
            return []

    def _beat(self, held: set[str]) -> list[str]:
        self._beats += 1
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(alive_key(self.node), "1", px=self.timeout_ms)
        pipe.sadd(NODES_KEY, self.node)
        pipe.exists(holds_key(self.node))
        pipe.smembers(NODES_KEY)
        _, readded, has_holds, nodes = pipe.execute()
        with _lock:
            # All of it now and then, and whenever Redis lost it or a peer took this node
            # for dead (it was frozen) and forgot it.
            if readded or not has_holds or self._beats % 10 == 0:
                self._written = set()
            added, removed = held - self._written, self._written - held
        pipe = self.redis.pipeline(transaction=False)
        if removed:
            pipe.hdel(holds_key(self.node), *removed)
        if added:
            pipe.hset(holds_key(self.node), mapping=dict.fromkeys(added, "1"))
        pipe.pexpire(holds_key(self.node), HOLDS_TTL_MS)
        pipe.execute()
        with _lock:
            self._written.difference_update(removed)
            self._written.update(added)
        others = sorted(n.decode() for n in nodes if n.decode() != self.node)
        if not others:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for other in others:
            pipe.exists(alive_key(other))
        dead = [n for n, alive in zip(others, pipe.execute(), strict=True) if not alive]
        # The first node to notice claims the dead one (the claim outlives a lost reclaim
        # message: the sweeper covers that case).
        return [n for n in dead if self.redis.set(claim_key(n), self.node, nx=True, px=60_000)]


def holdings(redis: Redis, node: str) -> list[str]:
    """The jobs a node last said it held."""
    keys: list[bytes] = redis.hkeys(holds_key(node))  # type: ignore[assignment]
    return sorted(k.decode() for k in keys)


def forget(redis: Redis, node: str) -> None:
    """A dead node was reclaimed: nothing of it is kept."""
    pipe = redis.pipeline(transaction=False)
    pipe.srem(NODES_KEY, node)
    pipe.delete(holds_key(node))
    pipe.execute()


# --- the worker side: a step of Celery's consumer ------------------------------------------

#: The tasks whose first argument is a job holding (or about to hold) an upstream slot.
_JOB_TASKS: Final = frozenset({names.SUBMIT_TASK, names.POLL_TASK})


def held_by_this_worker() -> set[str]:
    """Jobs whose messages this process holds (waiting for a countdown, reserved or
    running), and the jobs its running tasks admitted."""
    for _ in range(5):  # pool threads change the registry while it is read
        try:
            requests = tuple(state.requests.values())
            break
        except RuntimeError:
            continue
    else:
        requests = ()
    held = worked_on()
    for request in requests:
        if request.task_name in _JOB_TASKS and request.args and isinstance(request.args[0], str):
            held.add(request.args[0])
    return held


#: This process's incarnation (one per worker process, kept across consumer restarts).
_node: Node | None = None
_node_pid: int | None = None


def _received(request: Any = None, **_: Any) -> None:
    node = _node
    if node is None or request is None or not request.eta:
        return  # a message without countdown runs now; the next heartbeat records it
    if request.task_name in _JOB_TASKS and request.args and isinstance(request.args[0], str):
        node.note(request.args[0])


task_received.connect(_received)  # in the consumer, as each message arrives


class Presence(bootsteps.StartStopStep):  # type: ignore[misc]
    """Announce this worker, and reclaim the jobs of workers that died (see module doc).

    Runs on the consumer's timer: a worker whose consumer is stuck stops announcing itself,
    like one that died, and its jobs move on elsewhere.
    """

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.timer_entry: Any = None

    def start(self, parent: Any) -> None:
        settings = get_settings()
        if _node is None or _node_pid != os.getpid():
            _set_node(
                Node(
                    _presence_redis(settings.limiter_redis_url, settings.heartbeat_seconds),
                    incarnation(str(parent.hostname)),
                    timeout=settings.node_timeout_seconds,
                )
            )
        self.tick()
        self.timer_entry = parent.timer.call_repeatedly(
            settings.heartbeat_seconds, self.tick, priority=10
        )

    def tick(self) -> None:
        node = _node
        if node is None:
            return
        for dead in node.beat(held_by_this_worker()):
            log.warning("worker.silent", node=dead, action="reclaiming its jobs")
            _send_reclaim(dead)

    def stop(self, parent: Any) -> None:
        # Nothing is withdrawn: the consumer also stops for a broker reconnect (the pool
        # runs on), and at a warm shutdown before the pool has drained. The node's key
        # simply lapses if the process does not come back; what its peers then reclaim
        # can only be moved on twice, which is harmless.
        if self.timer_entry is not None:
            self.timer_entry.cancel()
            self.timer_entry = None

    shutdown = stop


def _set_node(node: Node) -> None:
    global _node, _node_pid
    _node, _node_pid = node, os.getpid()


def _presence_redis(url: str, heartbeat: float) -> Redis:
    """Its own client: calls in the consumer's thread must be short, and never retried
    (a heartbeat that fails is simply the next one's to make)."""
    timeout = min(0.5, heartbeat / 2)
    return Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )


def _send_reclaim(node: str) -> None:
    from .celery_app import app

    try:
        app.tasks[names.RECLAIM_TASK].apply_async((node,))
    except Exception:  # the claim lapses; the sweeper covers the jobs meanwhile
        log.exception("worker.reclaim_not_sent", node=node)
