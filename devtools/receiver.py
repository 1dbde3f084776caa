"""A webhook receiver for the tests and the demo: checks signatures, logs every request.

Run it as its own process::

    python -m devtools.receiver --port 8099 --secret whsec_... --log /tmp/hooks.jsonl \\
        [--secret whsec_...] [--fail-until EPOCH_SECONDS] [--host 127.0.0.1]

* ``POST /<any path>``: a webhook. Verified with the ``standardwebhooks`` library's own
  ``Webhook(secret).verify(body, headers)`` against each ``--secret`` (any one may match).
  Answers 401 when no secret verifies it, 503 while ``time.time() < fail_until``, else 200.
* ``GET /health``: 200 ``{"ok": true, "fail_until": ...}`` once it is listening.
* ``POST /config`` with ``{"fail_until": EPOCH_SECONDS}``: change ``fail_until`` at run time
  (0 or a past time: answer 200 from now on).

Every webhook request, whatever the answer, appends one JSON line to the log file::

    {"at": 1764601234.567, "webhook_id": "...", "verified": true, "status": 200,
     "body": {...parsed JSON or null...}, "path": "/hooks", "webhook_timestamp": "1764601234",
     "seen_before": false, "error": null, "headers": {...every header...}, "raw": "..."}

``at`` is the arrival time (``time.time()``); ``status`` is what was answered; ``error`` says
why a request was refused (the verification error) and is null otherwise; ``seen_before`` is
true when the same ``webhook-id`` arrived earlier with a valid signature (a retry or a
duplicate); ``headers`` are all the request's headers (names in lower case) and ``raw`` the
body exactly as received (UTF-8), so a test can verify the request again elsewhere
(``tests/node/verify_webhook.mjs`` takes ``{"secret", "headers", "body": raw}``). A line per
request also goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from standardwebhooks.webhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


class Receiver:
    """The receiver's state: secrets, the failure window, the log and the ids seen."""

    def __init__(
        self,
        secrets: Sequence[str],
        log_path: Path,
        fail_until: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not secrets:
            raise ValueError("at least one --secret")
        self.hooks = [Webhook(secret) for secret in secrets]  # refuses a malformed secret now
        self.log_path = log_path
        self.fail_until = fail_until
        self.clock = clock
        self.seen: set[str] = set()
        self.lock = threading.Lock()

    def verify(self, body: bytes, headers: dict[str, str]) -> str | None:
        """None when one of the secrets verifies the request, else why not."""
        reasons: list[str] = []
        for hook in self.hooks:
            try:
                hook.verify(body, headers, json_parse=False)
            except Exception as exc:  # noqa: BLE001 - the library raises more than its own error
                reasons.append(f"{type(exc).__name__}: {exc}")
            else:
                return None
        return "; ".join(dict.fromkeys(reasons))

    def record(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, separators=(",", ":"), ensure_ascii=False)
        with self.lock, self.log_path.open("a", encoding="utf-8") as log:
            log.write(line + "\n")
        print(
            f"receiver: {entry['at']:.3f} {entry['webhook_id']} -> {entry['status']}"
            + (f" ({entry['error']})" if entry["error"] else ""),
            file=sys.stderr,
            flush=True,
        )


def _parse(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:  # not JSON, or not UTF-8
        return None


def create_app(receiver: Receiver) -> Starlette:
    async def webhook(request: Request) -> JSONResponse:
        at = receiver.clock()
        body = await request.body()
        headers = dict(request.headers)
        webhook_id = headers.get("webhook-id")
        error = receiver.verify(body, headers)
        with receiver.lock:
            seen_before = webhook_id in receiver.seen
            if webhook_id is not None and error is None:
                receiver.seen.add(webhook_id)
        answer: dict[str, Any]
        if error is not None:
            status, answer = 401, {"error": "signature not verified"}
        elif at < receiver.fail_until:
            status, answer = 503, {"error": f"failing until {receiver.fail_until}"}
        else:
            status, answer = 200, {"ok": True}
        receiver.record(
            {
                "at": at,
                "webhook_id": webhook_id,
                "verified": error is None,
                "status": status,
                "body": _parse(body),
                "path": request.url.path,
                "webhook_timestamp": headers.get("webhook-timestamp"),
                "seen_before": seen_before,
                "error": error,
                "headers": headers,
                "raw": body.decode("utf-8", errors="replace"),
            }
        )
        return JSONResponse(answer, status_code=status)

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True, "fail_until": receiver.fail_until})

    async def config(request: Request) -> JSONResponse:
        data = _parse(await request.body())
        value = data.get("fail_until") if isinstance(data, dict) else None
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            return JSONResponse({"error": 'expected {"fail_until": <epoch seconds>}'}, 400)
        receiver.fail_until = float(value)
        print(f"receiver: fail_until = {receiver.fail_until}", file=sys.stderr, flush=True)
        return JSONResponse({"fail_until": receiver.fail_until})

    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/config", config, methods=["POST"]),
            Route("/{path:path}", webhook, methods=["POST"]),
        ]
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.receiver",
        description=(__doc__ or "").split("\n\n", 1)[0],
        epilog="Routes: POST /<path> (webhooks), GET /health, POST /config {fail_until}.",
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--secret", action="append", required=True, help="whsec_... (repeat: any one verifies)"
    )
    parser.add_argument("--log", type=Path, required=True, help="JSON lines, appended")
    parser.add_argument("--fail-until", type=float, default=0.0, help="answer 503 until then")
    args = parser.parse_args(argv)

    import uvicorn

    receiver = Receiver(args.secret, args.log, args.fail_until)
    args.log.parent.mkdir(parents=True, exist_ok=True)
    args.log.touch()
    uvicorn.run(
        create_app(receiver), host=args.host, port=args.port, log_level="warning", access_log=False
    )


if __name__ == "__main__":
    main()
