"""Pydantic models of the producer contract: the request a producer sends, the job it gets back."""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import json
import re
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Final
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from .enums import ErrorCode, JobStatus
from .errors import FieldError

#: The upstream's size limit for one reference image, decoded.
MAX_IMAGE_BYTES: Final = 10 * 1024 * 1024
#: Largest JSON encoding of ``metadata`` a job carries around.
MAX_METADATA_BYTES: Final = 4096
#: Deepest nesting of objects and arrays in ``metadata``, ``metadata`` itself included:
#: ``{"a": 1}`` is 1 level, ``{"a": [{"b": 1}]}`` 3. Deeper values are what crash JSON
#: encoders and decoders further down the line, long after the producer has gone.
MAX_METADATA_DEPTH: Final = 8
#: Largest request, as compact JSON in UTF-8 (what ``enqueue`` sends). One message carries
#: the whole request through Redis, which holds every queued message in memory and stores
#: the body base64-encoded again (a third more); ten 10 MB data URLs (about 140 MB of
#: base64) in one message are not something a broker should carry. 16 MiB leaves room for
#: one data URL near the 10 MB limit or several ordinary ones; reference big images by
#: https:// URL instead.
MAX_REQUEST_BYTES: Final = 16 * 1024 * 1024
#: Longest https:// reference URL (data: URLs are limited by MAX_IMAGE_BYTES instead).
MAX_URL_CHARS: Final = 2048
MAX_DEADLINE_SECONDS: Final = 7 * 24 * 3600

#: Text PostgreSQL can store: no NUL, no unpaired UTF-16 surrogate (a lone JSON \\udXXX).
#: Written for both readers: Python's re sees code points, ECMAScript's UTF-16 code units.
TEXT_PATTERN: Final = r"^(?:[^\u0000\ud800-\udfff]|[\ud800-\udbff][\udc00-\udfff])*$"

# Every regular expression below is written for two readers, Python's re and ECMAScript
# (with or without the u flag, as ajv uses it): ASCII letters spelt out in both cases
# instead of an inline (?i), \xNN / \uNNNN escapes, no escapes of characters that need none.
#: The end of the text. Not "$", which Python's re (so Python's jsonschema) also matches
#: before a final newline.
_END: Final = r"(?![\s\S])"

#: Characters that do not make text visible: Unicode whitespace (what str.isspace() says,
#: which also counts the U+001C..U+001F separators) and the zero-width U+200B..U+200D,
#: U+2060, U+FEFF.
_INVISIBLE: Final = (
    r"\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200d\u2028\u2029\u202f\u205f\u2060\u3000\ufeff"
)
#: Matches (searched, not anchored) text with at least one visible character.
VISIBLE_TEXT_PATTERN: Final = f"[^{_INVISIBLE}]"
_VISIBLE_TEXT = re.compile(VISIBLE_TEXT_PATTERN)

#: Characters no https:// reference URL may contain anywhere: control characters, Unicode
#: whitespace, invisible formatting characters (zero-width, bidirectional overrides) and
#: the backslash, which some URL parsers read as "/" and others do not.
_URL_UNSAFE: Final = (
    r"\x00-\x20\x7f-\xa0\u1680\u2000-\u200f\u2028-\u202f\u205f-\u2069\u3000\ufeff\\"
)
_URL_UNSAFE_CHAR = re.compile(f"[{_URL_UNSAFE}]")


def _octets_regex(low: int, high: int) -> str:
    """A regex for the decimal numbers low..high (0..255, no leading zeros)."""

    def same_length(lo: str, hi: str) -> str:
        if len(lo) == 1:
            return lo if lo == hi else f"[{lo}-{hi}]"
        if lo[0] == hi[0]:
            return lo[0] + same_length(lo[1:], hi[1:])
        rest = len(lo) - 1
        parts = []
        first, last = int(lo[0]), int(hi[0])
        if lo[1:] != "0" * rest:
            parts.append(lo[0] + same_length(lo[1:], "9" * rest))
            first += 1
        tail = None
        if hi[1:] != "9" * rest:
            tail = hi[0] + same_length("0" * rest, hi[1:])
            last -= 1
        if first <= last:
            digit = str(first) if first == last else f"[{first}-{last}]"
            parts.append(digit + ("[0-9]" if rest == 1 else f"[0-9]{{{rest}}}"))
        if tail is not None:
            parts.append(tail)
        return parts[0] if len(parts) == 1 else "(?:" + "|".join(parts) + ")"

    parts = []
    for digits in (3, 2, 1):  # longest first
        lo = max(low, 0 if digits == 1 else 10 ** (digits - 1))
        hi = min(high, 10**digits - 1)
        if lo <= hi:
            parts.append(same_length(str(lo), str(hi)))
    return parts[0] if len(parts) == 1 else "(?:" + "|".join(parts) + ")"


def _ipv4_network_regex(network: ipaddress.IPv4Network) -> str:
    """A regex matching the start of every dotted-quad address in ``network``."""
    octets = network.network_address.packed
    whole, bits = divmod(network.prefixlen, 8)
    parts = [str(octet) for octet in octets[:whole]]
    if bits:
        low = octets[whole]
        parts.append(_octets_regex(low, low + 2 ** (8 - bits) - 1))
    text = r"\.".join(parts)
    return text + (r"\." if len(parts) < 4 else "(?![0-9])")


#: IPv4 ranges a reference URL may not name: "this network", private, shared (CGNAT),
#: loopback, link-local, IETF protocol assignments, documentation, 6to4 relay, benchmarking,
#: multicast, reserved and broadcast. A superset of what ipaddress calls non-global.
BLOCKED_IPV4_NETWORKS: Final = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
    )
)
#: IPv6 addresses a reference URL may name: global unicast (2000::/3) only, so no loopback,
#: unspecified, IPv4-mapped or -compatible, NAT64, unique-local, link-local, site-local or
#: multicast address; and not these parts of 2000::/3 either: IETF protocol assignments
#: (Teredo, benchmarking, ORCHID), documentation, 6to4 (which embeds any IPv4 address).
ALLOWED_IPV6_NETWORK: Final = ipaddress.IPv6Network("2000::/3")
BLOCKED_IPV6_NETWORKS: Final = tuple(
    ipaddress.IPv6Network(n) for n in ("2001::/23", "2001:db8::/32", "2002::/16", "3fff::/20")
)

_HEX = "[0-9A-Fa-f]"
_H16 = f"{_HEX}{{1,4}}"
_OCTET = _octets_regex(0, 255)
_IPV4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}"
_LS32 = f"(?:{_H16}:{_H16}|{_IPV4})"
#: RFC 3986's IPv6address, the text inside the brackets of an IPv6 literal host.
_IPV6 = (
    "(?:"
    + "|".join(
        [
            f"(?:{_H16}:){{6}}{_LS32}",
            f"::(?:{_H16}:){{5}}{_LS32}",
            f"(?:{_H16})?::(?:{_H16}:){{4}}{_LS32}",
            f"(?:(?:{_H16}:)?{_H16})?::(?:{_H16}:){{3}}{_LS32}",
            f"(?:(?:{_H16}:){{0,2}}{_H16})?::(?:{_H16}:){{2}}{_LS32}",
            f"(?:(?:{_H16}:){{0,3}}{_H16})?::{_H16}:{_LS32}",
            f"(?:(?:{_H16}:){{0,4}}{_H16})?::{_LS32}",
            f"(?:(?:{_H16}:){{0,5}}{_H16})?::{_H16}",
            f"(?:(?:{_H16}:){{0,6}}{_H16})?::",
        ]
    )
    + ")"
)
_BLOCKED_IPV4 = "(?:" + "|".join(_ipv4_network_regex(n) for n in BLOCKED_IPV4_NETWORKS) + ")"
# 2000::/3 is every address whose first group is 2000..3fff, always written with 4 digits.
_ALLOWED_IPV6_START = f"[23]{_HEX}{{3}}:"
# The text of the blocked parts of 2000::/3: the first group, then the second group's range.
_BLOCKED_IPV6 = (
    f"(?:2001:(?::|0{{0,2}}{_HEX}{{1,2}}:|0?1{_HEX}{{2}}:)"  # 2001::/23: 2nd group 0..1ff
    "|2001:0?[dD][bB]8:"  # 2001:db8::/32
    "|2002:"  # 2002::/16
    f"|3[fF][fF][fF]:(?::|{_HEX}{{1,3}}:|0{_HEX}{{3}}:))"  # 3fff::/20: 2nd group 0..fff
)
_LABEL = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
#: A DNS host name: at most 253 characters, at least two labels of letters, digits and
#: inner hyphens (internationalised names as xn-- punycode), the last starting with a letter
#: (so "127.1" or "0x7f.1", which some resolvers read as IPv4 addresses, are not names) and
#: not "localhost".
_DNS_NAME = (
    "(?=[A-Za-z0-9.-]{1,253}(?![A-Za-z0-9.-]))"
    rf"(?:{_LABEL}\.)+"
    "(?![lL][oO][cC][aA][lL][hH][oO][sS][tT](?![A-Za-z0-9-]))"
    "[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
)
_PORT = "(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
#: A URL tail character: anything but the unsafe ones and unpaired surrogates.
_URL_CHAR = f"(?:[^{_URL_UNSAFE}\\ud800-\\udfff]|[\\ud800-\\udbff][\\udc00-\\udfff])"
#: The https:// reference URLs the model accepts (it also limits them to MAX_URL_CHARS):
#: a host that is a DNS name, a public IPv4 address or a bracketed public IPv6 address; no
#: user name or password; an optional port 1..65535; any path, query and fragment free of
#: control characters, whitespace and backslashes.
HTTPS_URL_PATTERN: Final = (
    "^[hH][tT][tT][pP][sS]://"
    f"(?:{_DNS_NAME}|(?!{_BLOCKED_IPV4}){_IPV4}"
    rf"|\[(?={_ALLOWED_IPV6_START})(?!{_BLOCKED_IPV6}){_IPV6}\])"
    f"(?::{_PORT})?(?:[/?#]{_URL_CHAR}*)?{_END}"
)
_HTTPS_URL = re.compile(HTTPS_URL_PATTERN)

_HTTPS_SCHEME = re.compile("https://", re.IGNORECASE | re.ASCII)
_DATA_URL = re.compile(r"data:image/(?P<kind>jpeg|png);base64,", re.IGNORECASE | re.ASCII)
_MAGIC: Final = {"jpeg": b"\xff\xd8\xff", "png": b"\x89PNG\r\n\x1a\n"}
#: The longest base64 payload whose decoded size is under MAX_IMAGE_BYTES.
_MAX_B64_CHARS: Final = -(-(MAX_IMAGE_BYTES - 1) // 3) * 4
_B64 = "[A-Za-z0-9+/]"
# Quanta spelt out, not _B64{4}: V8 runs out of stack on "(?:[...]{4})*" over megabytes.
_BASE64 = f"(?:{_B64}{_B64}{_B64}{_B64})*(?:{_B64}{_B64}==|{_B64}{_B64}{_B64}=)?"
#: How each kind's signature starts in base64: "/9j/" is FF D8 FF; "iVBORw0KGg" then one of
#: o..r is the 8-byte PNG signature (the last character also carries 2 bits of what follows).
_MAGIC_B64: Final = {"jpeg": "/9j/", "png": "iVBORw0KGg[o-r]"}
_DATA_PREFIX: Final = {
    "jpeg": "[dD][aA][tT][aA]:[iI][mM][aA][gG][eE]/[jJ][pP][eE][gG];[bB][aA][sS][eE]64,",
    "png": "[dD][aA][tT][aA]:[iI][mM][aA][gG][eE]/[pP][nN][gG];[bB][aA][sS][eE]64,",
}
#: Data URLs the model accepts, by kind: valid base64 that starts with the kind's signature.
DATA_URL_PATTERNS: Final = {
    kind: f"^{prefix}(?={_MAGIC_B64[kind]}){_BASE64}{_END}" for kind, prefix in _DATA_PREFIX.items()
}
#: Longest data URL of each kind (its decoded image is then just under MAX_IMAGE_BYTES).
DATA_URL_MAX_CHARS: Final = {
    kind: len(f"data:image/{kind};base64,") + _MAX_B64_CHARS for kind in _DATA_PREFIX
}
# The scheme, lower case first for the reader, then in any case.
_IMAGE_PATTERN: Final = (
    "^(?:https://|[hH][tT][tT][pP][sS]://|"
    + "[dD][aA][tT][aA]:[iI][mM][aA][gG][eE]/(?:[jJ][pP][eE][gG]|[pP][nN][gG]);[bB][aA][sS][eE]64,)"
)


def storable_problem(text: str) -> str | None:
    """Why ``text`` cannot be stored as PostgreSQL text, or None when it can."""
    if "\x00" in text:
        return "must not contain a NUL character"
    try:
        text.encode()
    except UnicodeEncodeError:
        return "must not contain an unpaired surrogate"
    return None


def check_storable(value: str) -> str:
    """Return ``value`` if PostgreSQL can store it as text."""
    problem = storable_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def unstorable_at(value: object, path: str = "") -> str | None:
    """Where in a JSON-like ``value`` (keys included, however deep) is text PostgreSQL
    cannot store, as a dotted path under ``path``; None when there is none."""
    stack = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str) and storable_problem(item) is not None:
            return where
        if isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, str) and storable_problem(key) is not None:
                    return f"{where}.{key!a}" if where else ascii(key)
                stack.append((child, f"{where}.{key}" if where else str(key)))
        elif isinstance(item, list | tuple):
            stack.extend((child, f"{where}.{i}") for i, child in enumerate(item))
    return None


class AspectRatio(StrEnum):
    """Aspect ratios the upstream accepts."""

    R1_1 = "1:1"
    R16_9 = "16:9"
    R4_3 = "4:3"
    R3_2 = "3:2"
    R2_3 = "2:3"
    R3_4 = "3:4"
    R9_16 = "9:16"
    R21_9 = "21:9"


#: Pixel size of each aspect ratio, as the upstream renders it.
ASPECT_RATIO_SIZES: Final[dict[AspectRatio, tuple[int, int]]] = {
    AspectRatio.R1_1: (1024, 1024),
    AspectRatio.R16_9: (1280, 720),
    AspectRatio.R4_3: (1152, 864),
    AspectRatio.R3_2: (1248, 832),
    AspectRatio.R2_3: (832, 1248),
    AspectRatio.R3_4: (864, 1152),
    AspectRatio.R9_16: (720, 1280),
    AspectRatio.R21_9: (1344, 576),
}


def check_visible(value: str) -> str:
    """Return ``value`` if it has a visible character: not only whitespace or zero-width."""
    if _VISIBLE_TEXT.search(value) is None:
        raise ValueError("must contain visible text, not only whitespace or zero-width characters")
    return value


def _metadata_problem(value: dict[str, Any]) -> str | None:
    """Why ``value`` cannot be metadata before it is even encoded: nested too deep, too many
    values for the size limit, or a key that is not text; None when none of those.

    Iterative, and it stops at the first problem, so a value nested 100,000 deep, a cycle or
    one list shared a million times costs no more than a small valid value.
    """
    stack: list[tuple[object, int]] = [(value, 1)]
    seen = 0
    while stack:
        item, depth = stack.pop()
        seen += 1
        children: Any
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > MAX_METADATA_DEPTH:
            return f"must nest at most {MAX_METADATA_DEPTH} levels of objects and arrays"
        # Every value takes at least one byte of JSON, so more values than bytes is too big.
        if seen + len(stack) + len(item) > MAX_METADATA_BYTES:
            return f"must be at most {MAX_METADATA_BYTES} bytes as JSON"
        if isinstance(item, dict) and not all(isinstance(key, str) for key in item):
            return "must be a JSON object: every key, however deep, must be a string"
        if isinstance(item, dict) and item.keys() == {"__type__", "__value__"}:
            # kombu decodes such an object as a datetime, a Decimal, ...: the broker refuses it
            return "must not hold an object of exactly the keys __type__ and __value__"
        stack.extend((child, depth + 1) for child in children)
    return None


def _ip_literal_problem(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why a reference URL may not name ``address``, or None when it is a public one."""
    if isinstance(address, ipaddress.IPv6Address):
        listed = address in ALLOWED_IPV6_NETWORK and not any(
            address in network for network in BLOCKED_IPV6_NETWORKS
        )
    else:
        listed = not any(address in network for network in BLOCKED_IPV4_NETWORKS)
    flagged = (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_unspecified
        or address.is_multicast
        or address.is_reserved
        or not address.is_global
    )
    if listed and not flagged:
        return None
    return (
        "URL host must be a public address, not a private, loopback, link-local, "
        "unspecified, multicast or reserved one"
    )


_DNS_HOST = re.compile(_DNS_NAME)
_IPV4_HOST = re.compile(_IPV4)
_PORT_TEXT = re.compile(_PORT)
_INVALID_HOST = (
    "URL host must be a DNS name like images.example.com (letters, digits and hyphens, "
    "at least one dot, internationalised names as xn-- punycode) or a public IP address"
)


def _https_problem(url: str) -> str | None:
    """Why the https:// URL ``url`` (scheme in lower case) is refused, or None."""
    if len(url) > MAX_URL_CHARS:
        return f"https:// URL must be at most {MAX_URL_CHARS} characters"
    if _URL_UNSAFE_CHAR.search(url) is not None:
        return "URL must not contain whitespace, control or invisible characters, or a backslash"
    authority = re.split("[/?#]", url[len("https://") :], maxsplit=1)[0]
    if "@" in authority:
        return "URL must not contain a user name or password (user:password@)"
    if authority.startswith("["):
        end = authority.find("]") + 1 or len(authority)
        host, after = authority[:end], authority[end:]
    else:
        host, colon, port = authority.partition(":")
        after = colon + port
    if after and not (after[0] == ":" and _PORT_TEXT.fullmatch(after[1:])):
        if after[0] != ":":
            return _INVALID_HOST
        return "URL port must be a number from 1 to 65535"
    if not host:
        return "URL must name a host"
    if host.startswith("["):
        try:
            if "%" in host or not host.endswith("]"):  # no zone ids (fe80::1%eth0)
                raise ValueError(host)
            address: ipaddress.IPv4Address | ipaddress.IPv6Address
            address = ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return "URL host is not a valid IPv6 address"
        return _ip_literal_problem(address)
    if _IPV4_HOST.fullmatch(host):
        return _ip_literal_problem(ipaddress.IPv4Address(host))
    name = host.rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return "URL host must not be localhost"
    if all(c in "0123456789." for c in host):
        return "URL host is not a valid IPv4 address (four numbers 0..255, no leading zeros)"
    if _DNS_HOST.fullmatch(host) is None:
        return _INVALID_HOST
    return None


def check_reference_image(value: str) -> str:
    """Return ``value`` if it is an https:// URL or a real JPEG/PNG data URL under 10 MB.

    Schemes and media types are case-insensitive (RFC 3986, RFC 2397); the value returned
    spells them in lower case (``https://``, ``data:image/png;base64,``), the rest unchanged.
    https:// URLs are at most MAX_URL_CHARS long, with no user name or password, no
    whitespace or control characters, a valid port, and a DNS name or a public IP address as
    host. Host names are not resolved here.
    """
    check_storable(value)
    if _HTTPS_SCHEME.match(value):
        url = "https://" + value[len("https://") :]
        problem = _https_problem(url)
        if problem is None and _HTTPS_URL.fullmatch(url) is None:
            problem = "must be a valid https:// URL"  # the JSON Schema's pattern refuses it
        if problem is not None:
            raise ValueError(problem)
        return url
    match = _DATA_URL.match(value)
    if match is None:
        raise ValueError(
            "must be an https:// URL or a data:image/jpeg;base64 / data:image/png;base64 URL"
        )
    kind = match.group("kind").lower()
    payload = value[match.end() :]
    if len(payload) > _MAX_B64_CHARS:
        raise ValueError("image must be under 10 MB")
    try:
        data = base64.b64decode(payload, validate=True)
        # b64decode lets excess padding through ("/9j/="); canonical length or nothing
        if len(payload) != -(-len(data) // 3) * 4:
            raise ValueError(payload)
    except (binascii.Error, ValueError):
        raise ValueError("data URL payload is not valid base64") from None
    if len(data) >= MAX_IMAGE_BYTES:
        raise ValueError("image must be under 10 MB")
    if not data.startswith(_MAGIC[kind]):
        raise ValueError(f"data URL says image/{kind} but its bytes are not a {kind.upper()} image")
    return f"data:image/{kind};base64,{payload}"


ReferenceImage = Annotated[
    StrictStr,
    AfterValidator(check_reference_image),
    Field(
        description=(
            "An https:// URL (at most 2048 characters; no user name or password, whitespace "
            "or control characters; the host a DNS name or a public IP address, never a "
            "private, loopback, link-local, multicast or reserved one), or a "
            "data:image/jpeg;base64 / data:image/png;base64 URL whose bytes start with the "
            "JPEG / PNG signature, under 10 MB decoded. Schemes and media types are "
            "case-insensitive. The schema cannot tell whether a DNS name resolves to a private "
            "address (nothing here resolves names), nor whether the bytes after the signature "
            "are a whole image."
        ),
        json_schema_extra={
            "pattern": _IMAGE_PATTERN,
            "anyOf": [
                {"pattern": HTTPS_URL_PATTERN, "maxLength": MAX_URL_CHARS},
                *(
                    {"pattern": DATA_URL_PATTERNS[kind], "maxLength": DATA_URL_MAX_CHARS[kind]}
                    for kind in ("jpeg", "png")
                ),
            ],
        },
    ),
]
Dimension = Annotated[StrictInt, Field(ge=512, le=2048, multiple_of=8)]


_TOO_BIG: Final = (
    f"must be at most {MAX_REQUEST_BYTES} bytes (16 MiB) as JSON: send large reference images "
    "as https:// URLs, not data: URLs"
)


def _given_together(field: str, other: str) -> dict[str, Any]:
    """JSON Schema: when ``field`` is given (present and not null), so is ``other``."""
    return {
        "if": {"properties": {field: {"not": {"type": "null"}}}, "required": [field]},
        "then": {"properties": {other: {"not": {"type": "null"}}}, "required": [other]},
    }


#: A Celery name: task and queue names of a reply, as Celery and kombu spell them.
_CELERY_NAME: Final = r"^[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,199}(?![\s\S])"
_CELERY_NAME_PY: Final = r"[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,199}"
#: A reply queue: a plain Redis list name of the producer's own (no ':', which Redis keys of
#: this service use), never one of this service's or kombu's own names, in any case.
_QUEUE_NAME: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}(?![\s\S])"
_QUEUE_NAME_PY: Final = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}"
_RESERVED_QUEUE: Final = (
    r"^([iI][mM][aA][gG][eE][gG][eE][nN]|[uU][nN][aA][cC][kK][eE][dD]|[cC][eE][lL][eE][rR][yY])"
)
RESERVED_QUEUE_PREFIXES: Final = ("imagegen", "unacked", "celery")
# No userinfo, a host first; the model's validator is the full rule (and resolves nothing).
_WEBHOOK_URL: Final = (
    r"^[hH][tT][tT][pP][sS]?://(?![^/?#]*@)(?=[^/?#:])[^\x00-\x20\x7f]{1,2040}(?![\s\S])"
)


class ReplyTo(BaseModel):
    """A Celery task this service sends, by name, to a queue of the producer's, when the job
    ends: ``task(job=<JobView as JSON>)``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: Annotated[
        StrictStr,
        Field(description="The task's name.", json_schema_extra={"pattern": _CELERY_NAME}),
    ]
    queue: Annotated[
        StrictStr,
        Field(
            description="A queue of the producer's own: letters, digits and _.- (no ':'), not "
            "starting with imagegen, unacked or celery in any case.",
            json_schema_extra={"pattern": _QUEUE_NAME, "not": {"pattern": _RESERVED_QUEUE}},
        ),
    ]

    @field_validator("task")
    @classmethod
    def _celery_name(cls, value: str) -> str:
        if re.fullmatch(_CELERY_NAME_PY, value) is None:
            raise ValueError("must be 1 to 200 letters, digits or _.:@- (not starting with .:@-)")
        return value

    @field_validator("queue")
    @classmethod
    def _own_queue(cls, value: str) -> str:
        # The workers publish replies with their own broker rights: a name that is one of
        # this service's keys (queues, kombu's bookkeeping, the rate limiter) would let a
        # producer write into them.
        if re.fullmatch(_QUEUE_NAME_PY, value) is None:
            raise ValueError("must be 1 to 200 letters, digits or _.- (not starting with _.-)")
        if value.lower().startswith(RESERVED_QUEUE_PREFIXES):
            raise ValueError("must be a queue of your own, not starting with imagegen, "
                             "unacked or celery")  # fmt: skip
        return value


class WebhookTarget(BaseModel):
    """An endpoint that receives the job's end as a signed Standard Webhooks event."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: Annotated[
        StrictStr,
        Field(
            max_length=2048,
            json_schema_extra={"pattern": _WEBHOOK_URL},
            description="https:// (http:// only for hosts the deployment allow-lists); must "
            "resolve to public addresses only (checked by the worker when the request is "
            "accepted and before each attempt; JSON Schema cannot check that).",
        ),
    ]

    @field_validator("url")
    @classmethod
    def _plain_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an https:// URL with a host")
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not contain a user name or password")
        if any(ord(c) < 0x21 or ord(c) == 0x7F for c in value):
            raise ValueError("must not contain whitespace or control characters")
        return value


class GenerationRequest(BaseModel):
    """One image-to-image generation, as a producer enqueues it.

    The upstream fields carry the upstream's own constraints; ``idempotency_key``,
    ``metadata``, ``priority`` and ``deadline_seconds`` are this service's envelope.

    Limits a JSON Schema cannot express, which the pydantic model enforces: the whole
    request is at most 16 MiB (16777216 bytes) as compact UTF-8 JSON, so send large
    reference images as https:// URLs rather than data: URLs; ``metadata`` is at most 4 KiB
    (4096 bytes) as JSON. Host names in https:// URLs are checked as written, never
    resolved: a DNS name that points at a private address is not caught here.
    """

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "allOf": [_given_together("width", "height"), _given_together("height", "width")]
        },
    )

    prompt: Annotated[
        StrictStr,
        AfterValidator(check_storable),
        AfterValidator(check_visible),
        Field(
            min_length=1,
            max_length=1500,
            description="1..1500 characters, at least one of them visible: not only "
            "whitespace and zero-width characters.",
            json_schema_extra={
                "pattern": TEXT_PATTERN,
                "allOf": [{"pattern": VISIBLE_TEXT_PATTERN}],
            },
        ),
    ]
    subject_reference_images: Annotated[list[ReferenceImage], Field(min_length=1, max_length=10)]
    aspect_ratio: AspectRatio | None = Field(
        default=None, description="Wins over width/height when both are given."
    )
    width: Dimension | None = Field(default=None, description="Only together with height.")
    height: Dimension | None = Field(default=None, description="Only together with width.")
    seed: Annotated[StrictInt, Field(ge=0, le=2**63 - 1)] | None = None
    n: Annotated[StrictInt, Field(ge=1, le=9)] = 1
    prompt_optimizer: StrictBool = False

    idempotency_key: (
        Annotated[
            StrictStr,
            Field(
                min_length=1,
                max_length=200,
                pattern=r"^[\x21-\x7e]+$",  # pydantic's regex engine: "$" is the very end
                json_schema_extra={"pattern": r"^[\x21-\x7e]+" + _END},
            ),
        ]
        | None
    ) = Field(
        default=None,
        description="A retry (the same request with the same key) returns the first job; never "
        "a second upstream task. A key is for one request: the same key with a different "
        "request is an idempotency conflict.",
    )
    metadata: dict[str, Any] | None = Field(
        default=None,
        description=f"Small JSON object (<= {MAX_METADATA_BYTES} bytes encoded; the schema "
        f"cannot check that), at most {MAX_METADATA_DEPTH} levels of objects and arrays deep "
        "counting itself, returned with the job; no text in it may contain a NUL character or "
        "an unpaired surrogate.",
    )
    priority: Annotated[StrictInt, Field(ge=0, le=9)] = Field(
        default=5, description="0..9; higher is admitted first, then oldest first."
    )
    deadline_seconds: Annotated[StrictInt, Field(ge=1, le=MAX_DEADLINE_SECONDS)] | None = Field(
        default=None,
        description="Seconds from acceptance after which the job stops and fails "
        "deadline_exceeded; the worker's default when unset.",
    )
    reply_to: ReplyTo | None = Field(
        default=None,
        description="When the job ends, this Celery task is sent to this queue with kwargs "
        "{'job': <JobView>}.",
    )
    webhook: WebhookTarget | None = Field(
        default=None,
        description="When the job ends, a signed Standard Webhooks event is POSTed here.",
    )

    @model_validator(mode="before")
    @classmethod
    def _not_obviously_too_big(cls, data: Any) -> Any:
        # Cheap, before ten data URLs are decoded: their characters alone are a lower bound
        # of the request's JSON size. _fits_in_a_message below is exact.
        if isinstance(data, dict):
            images = data.get("subject_reference_images")
            if isinstance(images, list | tuple):
                size = sum(len(image) for image in images[:10] if isinstance(image, str))
                if size > MAX_REQUEST_BYTES:
                    raise ValueError(_TOO_BIG)
        return data

    @field_validator("aspect_ratio", mode="before")
    @classmethod
    def _aspect_ratio_is_text(cls, value: object) -> object:
        if value is not None and not isinstance(value, str):
            raise ValueError("must be one of " + ", ".join(a.value for a in AspectRatio))
        return value

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            problem = _metadata_problem(value)
            if problem is not None:
                raise ValueError(problem)
            try:
                encoded = json.dumps(value, separators=(",", ":"), allow_nan=False)
            except (TypeError, ValueError):
                raise ValueError("must be a JSON object") from None
            where = unstorable_at(value)
            if where is not None:
                raise ValueError(
                    f"text at {where} must not contain a NUL character or an unpaired surrogate"
                )
            if len(encoded.encode()) > MAX_METADATA_BYTES:
                raise ValueError(f"must be at most {MAX_METADATA_BYTES} bytes as JSON")
        return value

    @model_validator(mode="after")
    def _width_with_height(self) -> GenerationRequest:
        if (self.width is None) != (self.height is None):
            raise ValueError("width and height must be given together")
        return self

    @model_validator(mode="after")
    def _fits_in_a_message(self) -> GenerationRequest:
        if self.json_size() > MAX_REQUEST_BYTES:
            raise ValueError(_TOO_BIG)
        return self

    def json_size(self) -> int:
        """Bytes of this request as compact UTF-8 JSON without nulls (what ``enqueue`` sends).

        Encodes everything but the reference images, which can be megabytes: a data URL is
        base64, so its JSON is itself plus two quotes.
        """
        rest = self.model_dump_json(exclude_none=True, exclude={"subject_reference_images"})
        images = [
            len(image) + 2
            if image.startswith("data:")
            else len(json.dumps(image, ensure_ascii=False).encode())
            for image in self.subject_reference_images
        ]
        key = ',"subject_reference_images":[]'
        return len(rest.encode()) + len(key) + sum(images) + len(images) - 1

    def upstream_payload(self) -> dict[str, Any]:
        """The JSON body the upstream's submit endpoint receives."""
        body = self.model_dump(
            mode="json",
            exclude_none=True,
            exclude={
                "idempotency_key",
                "metadata",
                "priority",
                "deadline_seconds",
                "reply_to",
                "webhook",
            },
        )
        if self.aspect_ratio is not None:
            # The upstream ignores width/height then; not sending them keeps the request honest.
            body.pop("width", None)
            body.pop("height", None)
        return body

    def image_size(self) -> tuple[int, int]:
        """Pixel size the upstream renders for this request."""
        if self.aspect_ratio is not None:
            return ASPECT_RATIO_SIZES[self.aspect_ratio]
        if self.width is not None and self.height is not None:
            return (self.width, self.height)
        return ASPECT_RATIO_SIZES[AspectRatio.R1_1]


def request_fingerprint(request: GenerationRequest) -> str:
    """SHA-256 (hex) of ``request``'s canonical JSON: sorted keys, no whitespace, no nulls,
    defaults included, schemes and media types normalised, UTF-8.

    Two requests have the same fingerprint exactly when they ask for the same thing, however
    their JSON was spelt; the worker keeps it to tell a retry (same idempotency key, same
    request) from a conflict (same key, different request).
    """
    canonical = json.dumps(
        request.model_dump(mode="json", exclude_none=True),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    # surrogatepass: a validated request has no unpaired surrogate; one built without
    # validation (model_construct) still gets a fingerprint rather than an exception.
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


class GenerateKwargs(BaseModel):
    """The kwargs of an ``imagegen.generate`` message."""

    model_config = ConfigDict(extra="forbid")

    request: GenerationRequest


class ImageView(BaseModel):
    """One generated image and, once copied, where and what the copy is."""

    index: int
    url: str = Field(description="The upstream's URL; it expires at the job's result_expires_at.")
    width: int
    height: int
    format: str
    href: str | None = Field(
        default=None,
        description="The copy through the HTTP API, relative to its base URL "
        "(`/v1/jobs/{id}/images/{index}`); None until the image is stored.",
    )
    sha256: str | None = Field(default=None, description="Hex SHA-256 of the stored bytes.")
    size_bytes: int | None = Field(default=None, description="Size of the stored copy.")
    content_type: str | None = Field(
        default=None, description="Media type of the stored copy, from its own bytes."
    )
    storage_key: str | None = Field(
        default=None, description="The copy's key in the result store (a file or an object)."
    )
    stored_path: str | None = Field(
        default=None, description="The copy's file on the worker's disk (local storage only)."
    )


class DeliveryState(StrEnum):
    """Where a delivery of a job's end is."""

    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


class DeliveryView(BaseModel):
    """One channel of a job's outbox, as operators see it."""

    id: str
    channel: str = Field(description="reply or webhook")
    state: DeliveryState
    attempts: int
    last_status: int | None = None
    last_error: str | None = Field(
        default=None, description="Status code and a short excerpt, never a whole body."
    )
    next_attempt_at: datetime | None = None
    delivered_at: datetime | None = None


class JobView(BaseModel):
    """A job as producers, the CLI and operators see it."""

    id: str
    status: JobStatus
    priority: int
    created_at: datetime
    updated_at: datetime
    submitted_at: datetime | None = None
    finished_at: datetime | None = None
    deadline_at: datetime
    upstream_task_id: str | None = None
    images: list[ImageView] = Field(default_factory=list)
    billing_amount: Decimal | None = Field(default=None, description="What the upstream charged.")
    duration_ms: int | None = None
    result_expires_at: datetime | None = None
    error_code: ErrorCode | None = None
    error_message: str | None = None
    errors: list[FieldError] | None = Field(
        default=None,
        description="For invalid_request: each problem, the same shape as the API's 422.",
    )
    metadata: dict[str, Any] | None = None
    idempotency_key: str | None = None
    tenant: str | None = Field(default=None, description="Who created the job.")
    deliveries: list[DeliveryView] = Field(
        default_factory=list,
        description="Where the job's end is being delivered (not part of delivered events).",
    )


def describe_validation_error(exc: ValidationError, limit: int = 5) -> str:
    """One line naming each bad field and what is wrong with it."""
    parts: list[str] = []
    for error in exc.errors(include_url=False, include_input=False)[:limit]:
        location = ".".join(str(p) for p in error["loc"]) or "request"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        parts.append(f"{location}: {message}")
    more = exc.error_count() - len(parts)
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)


__all__ = [
    "ASPECT_RATIO_SIZES",
    "MAX_IMAGE_BYTES",
    "MAX_METADATA_BYTES",
    "MAX_METADATA_DEPTH",
    "MAX_REQUEST_BYTES",
    "MAX_URL_CHARS",
    "AspectRatio",
    "DeliveryState",
    "DeliveryView",
    "ErrorCode",
    "GenerateKwargs",
    "GenerationRequest",
    "ImageView",
    "JobStatus",
    "JobView",
    "ReplyTo",
    "WebhookTarget",
    "check_reference_image",
    "check_visible",
    "describe_validation_error",
    "request_fingerprint",
]
