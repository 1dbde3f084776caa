"""Task arguments as operators may see them: redacted summaries, never the values.

Celery shows a task's ``argsrepr``/``kwargsrepr`` in its log lines and task events, and
Flower shows them on every task page. A request holds what must not be spread around: a
prompt (a user's words), data URLs (a user's face), metadata (whatever the producer keeps
there), webhook URLs (which may carry tokens). The worker decides what is shown, whatever
the producer put in the message headers: :class:`RedactedRequest` recomputes both strings
from the decoded arguments, and every message the workers publish carries the same
summaries (``taskclass.ObservedTask``).

- a prompt: its first 40 characters, then ``…`` and its length;
- a data URL: ``<png 2.1 KB>`` (its media subtype and decoded size);
- any other URL (references, webhooks): scheme and host only;
- metadata: its keys only;
- the request's scalar knobs (``n``, ``seed``, ``aspect_ratio``, …): their values, when
  they have the type the contract gives them;
- anything else: its type and size (``<str 12 chars>``, ``<dict 3 keys>``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit

from celery.worker.request import Request

from api_schema import AspectRatio, names

PROMPT_CHARS: Final = 40
#: At most this many items of a list, or keys of a mapping, are summarised.
MAX_ITEMS: Final = 10
#: Identifiers shown as they are (job ids, delivery ids, queue and task names).
_PLAIN: Final = re.compile(r"[A-Za-z0-9_.:@\-]{1,64}")
_FIELD: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}")
_SUBTYPE: Final = re.compile(r"[a-z0-9.+\-]{1,20}")
_DATA_URL: Final = re.compile(r"data:([^,;]*)((?:;[^,;]*)*),", re.IGNORECASE)
#: Request fields whose value is a number or a flag: shown as they are.
_NUMBERS: Final = frozenset(
    {"n", "seed", "width", "height", "priority", "deadline_seconds", "prompt_optimizer"}
)


def summarize(task: str, args: object, kwargs: object) -> tuple[str, str]:
    """``(argsrepr, kwargsrepr)`` of a call of ``task``: summaries, never raw values.

    Total: it runs in the worker's consumer for every message, which nothing may stop.
    """
    request_task = task == names.GENERATE_TASK
    try:
        return _sequence(args, request_task), _mapping(kwargs, request_task)
    except Exception:  # noqa: BLE001 - a defect here must not cost a message
        return "<not shown>", "<not shown>"


def _sequence(args: object, request_task: bool) -> str:
    if not isinstance(args, list | tuple):
        return _by_type(args)
    items = [_value(a) if not request_task else _by_type(a) for a in args[:MAX_ITEMS]]
    items += [f"<{len(args) - MAX_ITEMS} more>"] if len(args) > MAX_ITEMS else []
    return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"


def _mapping(kwargs: object, request_task: bool) -> str:
    if not isinstance(kwargs, Mapping):
        return _by_type(kwargs)
    parts = []
    for key, value in list(kwargs.items())[:MAX_ITEMS]:
        if request_task and key == "request":
            shown = request_summary(value)
        else:
            shown = _by_type(value) if request_task else _value(value)
        parts.append(f"{_field_name(key)}: {shown}")
    if len(kwargs) > MAX_ITEMS:
        parts.append(f"<{len(kwargs) - MAX_ITEMS} more>")
    return "{" + ", ".join(parts) + "}"


def request_summary(request: object) -> str:
    """A generation request, summarised field by field."""
    if not isinstance(request, Mapping):
        return _by_type(request)
    parts = []
    for key, value in list(request.items())[: MAX_ITEMS * 2]:
        parts.append(f"{_field_name(key)}: {_field(key, value)}")
    if len(request) > MAX_ITEMS * 2:
        parts.append(f"<{len(request) - MAX_ITEMS * 2} more>")
    return "{" + ", ".join(parts) + "}"


def _field(key: object, value: object) -> str:
    if key == "prompt" and isinstance(value, str):
        return prompt_summary(value)
    if key == "subject_reference_images" and isinstance(value, list):
        shown = [url_summary(v) if isinstance(v, str) else _by_type(v) for v in value[:MAX_ITEMS]]
        shown += [f"<{len(value) - MAX_ITEMS} more>"] if len(value) > MAX_ITEMS else []
        return "[" + ", ".join(shown) + "]"
    if key == "metadata" and isinstance(value, Mapping):
        return keys_summary(value)
    if key == "webhook" and isinstance(value, Mapping) and isinstance(value.get("url"), str):
        return "{url: " + url_summary(str(value["url"])) + "}"
    if key == "reply_to" and isinstance(value, Mapping):
        return "{" + ", ".join(f"{_field_name(k)}: {_value(v)}" for k, v in value.items()) + "}"
    if key in _NUMBERS and isinstance(value, int | float | bool):
        return repr(value)
    if key == "aspect_ratio" and value in {a.value for a in AspectRatio}:
        return repr(value)
    return _by_type(value)


def prompt_summary(prompt: str) -> str:
    """The prompt's first characters, and its length when it is cut."""
    if len(prompt) <= PROMPT_CHARS:
        return repr(prompt)
    return repr(prompt[:PROMPT_CHARS] + "…") + f" ({len(prompt)} chars)"


def url_summary(url: str) -> str:
    """``<png 2.1 KB>`` for a data URL, scheme and host for any other URL."""
    data = _DATA_URL.match(url)
    if data is not None:
        media, params = data.group(1).lower(), data.group(2).lower()
        subtype = media.rpartition("/")[2]
        kind = subtype if _SUBTYPE.fullmatch(subtype) else "data"
        payload = len(url) - data.end()
        if ";base64" in params:
            padding = len(url) - len(url.rstrip("="))
            payload = payload * 3 // 4 - min(padding, 2)
        return f"<{kind} {human_size(payload)}>"
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        host = None
    if host and parts.scheme.lower() in ("http", "https") and _PLAIN.fullmatch(host):
        return repr(f"{parts.scheme.lower()}://{host}")
    return f"<url {len(url)} chars>"


def keys_summary(mapping: Mapping[Any, Any]) -> str:
    """A mapping's keys only."""
    keys = [_field_name(k) for k in list(mapping)[:MAX_ITEMS]]
    keys += [f"<{len(mapping) - MAX_ITEMS} more>"] if len(mapping) > MAX_ITEMS else []
    return "<keys: " + ", ".join(keys) + ">" if keys else "<no keys>"


def human_size(size: int) -> str:
    """``812 B``, ``2.1 KB``, ``3.4 MB``."""
    if size < 1024:
        return f"{max(size, 0)} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KB"
    return f"{size / (1024 * 1024):.1f} MB"


def _field_name(key: object) -> str:
    return key if isinstance(key, str) and _FIELD.fullmatch(key) else "<field>"


def _value(value: object) -> str:
    """An internal message's argument: ids and numbers as they are, the rest by type."""
    if value is None or isinstance(value, bool | int | float):
        return repr(value)
    if isinstance(value, str) and _PLAIN.fullmatch(value):
        return repr(value)
    return _by_type(value)


def _by_type(value: object) -> str:
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, str):
        return f"<str {len(value)} chars>"
    if isinstance(value, Mapping):
        return f"<dict {len(value)} keys>"
    if isinstance(value, list | tuple):
        return f"<list {len(value)} items>"
    return f"<{type(value).__name__}>"


class RedactedRequest(Request):  # type: ignore[misc]
    """Celery's worker-side request, with its argument strings recomputed as summaries.

    Whatever ``argsrepr``/``kwargsrepr`` the message's headers carried, the "Received task"
    log line, the task events (so Flower) and the failure log show these.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        argsrepr, kwargsrepr = summarize(self._type, self._args, self._kwargs)
        self._argsrepr, self._kwargsrepr = argsrepr, kwargsrepr
        # What the pool's tracer logs a failure or a success with.
        self._request_dict["argsrepr"] = argsrepr
        self._request_dict["kwargsrepr"] = kwargsrepr
