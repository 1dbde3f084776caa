"""Simulator configuration: limits, timing and fault knobs, from code, env or /_sim/config."""

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

_PROBABILITIES = frozenset(
    {
        "submit_400",
        "submit_500",
        "submit_503",
        "query_500",
        "query_503",
        "file_503",
        "file_404",
        "rate_burst_429",
        "hang_probability",
        "drop_after_create",
        "malformed_json",
        "fail_task",
    }
)
_NON_NEGATIVE_FLOATS = frozenset(
    {
        "latency_ms",
        "hang_seconds",
        "pending_seconds",
        "processing_seconds",
        "result_ttl_seconds",
        "duration_sigma",
        "pending_sigma",
    }
)
# Must be > 0: medians (a lognormal's log) and the duration cap.
_POSITIVE_FLOATS = frozenset({"duration_median_seconds", "pending_median_seconds", "max_seconds"})
# Any finite value: scaling exponents (negative means bigger tasks run faster per unit).
_FINITE_FLOATS = frozenset({"n_exponent", "pixel_exponent"})
# A sigma above this makes the tail meaningless (the max_seconds clamp would carry it).
MAX_SIGMA = 5.0
_NON_NEGATIVE_INTS = frozenset({"concurrency_limit", "rpm_limit"})
IMAGE_MODES = ("rendered", "stock")
TIMING_MODES = ("fixed", "lognormal")


@dataclass
class Faults:
    """Fault-injection knobs; probabilities are 0..1 and everything defaults to off."""

    submit_400: float = 0.0
    submit_500: float = 0.0
    submit_503: float = 0.0
    query_500: float = 0.0
    query_503: float = 0.0
    rate_burst_429: float = 0.0
    latency_ms: float = 0.0
    hang_probability: float = 0.0
    hang_seconds: float = 0.0
    drop_after_create: float = 0.0
    malformed_json: float = 0.0
    fail_task: float = 0.0
    # Result file downloads (the CDN): a passing outage, or a file that is gone for good.
    file_503: float = 0.0
    file_404: float = 0.0
    # A hostile or broken upstream: the text a failed task reports (echoing, say, the key
    # it was called with) and the format its results claim; None: the usual ones.
    fail_reason: str | None = None
    result_format: str | None = None
    seed: int | None = None


@dataclass
class SimConfig:
    """Live simulator settings; the app reads them on every request so changes apply at once."""

    keys: dict[str, str] = field(default_factory=dict)
    concurrency_limit: int = 3
    rpm_limit: int = 100
    pending_seconds: float = 0.5
    processing_seconds: float = 2.5
    result_ttl_seconds: float = 7 * 24 * 3600.0
    public_base_url: str = "http://127.0.0.1:8900"
    price_per_image: str = "0.0350"
    # Starting balance of every team, a decimal string; None means unlimited.
    balance: str | None = None
    # Result files: "rendered" draws each task's own images (a fresh render per task);
    # "stock" serves one image per size and index, like a CDN whose files cost this host
    # nothing: benchmarks use it, since the simulator shares the workers' CPU.
    images: str = "rendered"
    # Task durations (see simulator/timing.py): "fixed" uses pending_seconds and
    # processing_seconds exactly; "lognormal" draws the whole duration around
    # duration_median_seconds (log-spread duration_sigma) and carves a pending phase drawn
    # around pending_median_seconds (pending_sigma) out of it. Both scale the work by
    # n ** n_exponent and (pixels / 1024²) ** pixel_exponent, and clamp to max_seconds.
    timing: str = "fixed"
    duration_median_seconds: float = 8.0
    duration_sigma: float = 0.5
    pending_median_seconds: float = 0.5
    pending_sigma: float = 0.0
    n_exponent: float = 0.0
    pixel_exponent: float = 0.0
    max_seconds: float = 600.0
    # Seed of the duration RNG, separate from faults.seed so fault rolls never shift the
    # durations; None: a fresh random sequence.
    timing_seed: int | None = None
    faults: Faults = field(default_factory=Faults)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "SimConfig":
        """Build a config from SIM_* environment variables (defaults for unset ones)."""
        source = os.environ if env is None else env
        config = cls()
        changes: dict[str, Any] = {}
        if source.get("SIM_KEYS"):
            changes["keys"] = parse_keys(source["SIM_KEYS"])
        for name in _SCALAR_FIELDS:
            raw = source.get(f"SIM_{_ENV_ALIASES.get(name, name).upper()}")
            if raw is not None and raw != "":
                changes[name] = raw
        faults: dict[str, Any] = {}
        for name in _FAULT_FIELDS:
            raw = source.get(f"SIM_FAULT_{name.upper()}")
            if raw is not None and raw != "":
                faults[name] = raw
        if faults:
            changes["faults"] = faults
        config.update(changes, from_text=True)
        return config

    def update(self, changes: Mapping[str, Any], *, from_text: bool = False) -> None:
        """Apply a partial update atomically; raise ValueError naming the first bad field."""
        staged = dataclasses.replace(self, faults=dataclasses.replace(self.faults))
        for name, value in changes.items():
            if name == "faults":
                if not isinstance(value, Mapping):
                    raise ValueError("field 'faults' must be an object")
                for fname, fvalue in value.items():
                    _set_fault(staged.faults, fname, fvalue, from_text)
            elif name == "keys":
                staged.keys = _coerce_keys(value)
            elif name in _SCALAR_FIELDS:
                setattr(staged, name, _coerce(name, value, from_text))
            elif name in _FAULT_FIELDS:
                # Fault knobs are also accepted at top level: their names never collide.
                _set_fault(staged.faults, name, value, from_text)
            else:
                raise ValueError(f"unknown field '{name}'")
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(staged, f.name))

    def public_dict(self) -> dict[str, Any]:
        """Config as JSON-able data; API keys are replaced by the team list, never echoed."""
        data: dict[str, Any] = {
            "teams": sorted(set(self.keys.values())),
            "key_count": len(self.keys),
        }
        for name in _SCALAR_FIELDS:
            data[name] = getattr(self, name)
        data["faults"] = dataclasses.asdict(self.faults)
        return data


_SCALAR_FIELDS = (
    "concurrency_limit",
    "rpm_limit",
    "pending_seconds",
    "processing_seconds",
    "result_ttl_seconds",
    "public_base_url",
    "price_per_image",
    "balance",
    "images",
    "timing",
    "duration_median_seconds",
    "duration_sigma",
    "pending_median_seconds",
    "pending_sigma",
    "n_exponent",
    "pixel_exponent",
    "max_seconds",
    "timing_seed",
)
_ENV_ALIASES = {"concurrency_limit": "concurrency", "rpm_limit": "rpm"}
_FAULT_FIELDS = tuple(f.name for f in dataclasses.fields(Faults))


def parse_keys(text: str) -> dict[str, str]:
    """Parse 'key1=team1,key2=team2' (a bare key is its own team)."""
    keys: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, team = item.partition("=")
        key, team = key.strip(), team.strip()
        if not key or (sep and not team):
            raise ValueError("SIM_KEYS must look like 'key1=team1,key2=team2'")
        keys[key] = team if sep else key
    return keys


def _coerce_keys(value: Any) -> dict[str, str]:
    if isinstance(value, str):
        return parse_keys(value)
    if isinstance(value, Mapping) and all(
        isinstance(k, str) and isinstance(v, str) and k and v for k, v in value.items()
    ):
        return dict(value)
    raise ValueError("field 'keys' must map API keys to team ids")


def _set_fault(faults: Faults, name: str, value: Any, from_text: bool) -> None:
    if name not in _FAULT_FIELDS:
        raise ValueError(f"unknown field 'faults.{name}'")
    setattr(faults, name, _coerce(name, value, from_text))


def _coerce(name: str, value: Any, from_text: bool) -> Any:
    if name in ("fail_reason", "result_format"):
        if value is not None and not isinstance(value, str):
            raise ValueError(f"field '{name}' must be a string or null")
        return None if from_text and value in ("", "none", "null") else value
    if name in ("seed", "timing_seed"):
        return _coerce_seed(name, value, from_text)
    if name == "timing":
        if value not in TIMING_MODES:
            raise ValueError(f"field 'timing' must be one of {', '.join(TIMING_MODES)}")
        return value
    if name in _POSITIVE_FLOATS or name in _FINITE_FLOATS:
        real = _as_float(name, value, from_text)
        if name in _POSITIVE_FLOATS and real <= 0:
            raise ValueError(f"field '{name}' must be > 0, got {real}")
        return real
    if name == "images":
        if value not in IMAGE_MODES:
            raise ValueError(f"field 'images' must be one of {', '.join(IMAGE_MODES)}")
        return value
    if name in _NON_NEGATIVE_INTS:
        number: float = _as_int(name, value, from_text)
    elif name in _PROBABILITIES or name in _NON_NEGATIVE_FLOATS:
        number = _as_float(name, value, from_text)
    elif name == "public_base_url":
        if not isinstance(value, str) or not value.startswith(("http://", "https://")):
            raise ValueError(f"field '{name}' must be an http(s) URL")
        return value.rstrip("/")
    elif name == "balance":
        return _coerce_balance(value, from_text)
    else:
        return _coerce_price(name, value)
    if name.endswith("_sigma") and number > MAX_SIGMA:
        raise ValueError(f"field '{name}' must be between 0 and {MAX_SIGMA}, got {number}")
    if number < 0 or (name in _PROBABILITIES and number > 1):
        bounds = "between 0 and 1" if name in _PROBABILITIES else ">= 0"
        raise ValueError(f"field '{name}' must be {bounds}, got {number}")
    return number


def _coerce_seed(name: str, value: Any, from_text: bool) -> int | None:
    if value is None or (from_text and str(value).lower() in ("none", "null")):
        return None
    return _as_int(name, value, from_text)


def _coerce_balance(value: Any, from_text: bool) -> str | None:
    if value is None or (from_text and str(value).lower() in ("none", "null", "unlimited")):
        return None
    return _coerce_price("balance", value)


def _coerce_price(name: str, value: Any) -> str:
    """A non-negative decimal (string or number, never a bool) as a 4-decimal string."""
    try:
        if isinstance(value, bool):
            raise InvalidOperation
        price = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"field '{name}' must be a decimal number") from None
    if not price.is_finite() or price < 0:
        raise ValueError(f"field '{name}' must be a non-negative decimal number")
    return f"{price:.4f}"


def _as_int(name: str, value: Any, from_text: bool) -> int:
    if from_text and isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"field '{name}' must be an integer") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"field '{name}' must be an integer")
    return value


def _as_float(name: str, value: Any, from_text: bool) -> float:
    if from_text and isinstance(value, str):
        try:
            return _finite(name, float(value))
        except ValueError:
            raise ValueError(f"field '{name}' must be a finite number") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"field '{name}' must be a number")
    return _finite(name, float(value))


def _finite(name: str, number: float) -> float:
    if not math.isfinite(number):
        raise ValueError(f"field '{name}' must be a finite number")
    return number
