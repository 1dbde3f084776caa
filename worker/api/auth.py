"""Bearer tokens, each naming a tenant: ``IMAGEGEN_API_TOKENS="acme:tok1,globex:tok2"``.

A token is looked up by comparing its SHA-256 with every configured token's in constant
time (``hmac.compare_digest``, and no early exit), so the time taken says nothing about how
much of a token was right or which tenant came close.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Final

TENANT: Final = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
#: Short tokens can be guessed; 24 characters of a random alphabet are far out of reach.
MIN_TOKEN_CHARS: Final = 24
_TOKEN_CHARS: Final = re.compile(r"[A-Za-z0-9._~+/=-]+")


def parse_tokens(raw: str) -> dict[str, str]:
    """``{token: tenant}`` from ``tenant:token`` pairs; ValueError naming the bad pair by its
    position (never by its text: it holds a secret)."""
    tokens: dict[str, str] = {}
    for position, pair in enumerate((p.strip() for p in raw.split(",")), start=1):
        if not pair:
            continue
        tenant, sep, token = pair.partition(":")
        where = f"IMAGEGEN_API_TOKENS pair {position}"
        if not sep or not TENANT.fullmatch(tenant):
            raise ValueError(f"{where}: expected tenant:token, tenant as [a-z0-9][a-z0-9_.-]*")
        if len(token) < MIN_TOKEN_CHARS or not _TOKEN_CHARS.fullmatch(token):
            raise ValueError(
                f"{where}: a token needs at least {MIN_TOKEN_CHARS} characters of "
                "A-Z a-z 0-9 . _ ~ + / = -"
            )
        if token in tokens:
            raise ValueError(f"{where}: the same token twice")
        tokens[token] = tenant
    return tokens


@dataclass(frozen=True)
class Tokens:
    """The configured tokens, kept as digests."""

    digests: tuple[tuple[bytes, str], ...]

    @classmethod
    def of(cls, tokens: dict[str, str]) -> Tokens:
        return cls(tuple((hashlib.sha256(t.encode()).digest(), n) for t, n in tokens.items()))

    def tenant(self, authorization: str | None) -> str | None:
        """The tenant of an ``Authorization: Bearer <token>`` header, or None."""
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        given = hashlib.sha256(token.strip().encode("utf-8", "replace")).digest()
        found: str | None = None
        for digest, tenant in self.digests:
            if hmac.compare_digest(given, digest):
                found = tenant
        return found
