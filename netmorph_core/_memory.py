"""Working-set estimates checked before large allocations: a clear error, never an OOM kill.

Every public routine that allocates in proportion to its arguments estimates the bytes it will
hold at once and calls :func:`check_working_set` before allocating.
"""

from __future__ import annotations

import math
import os
import time

from ._environ import getenv

ENV_LIMIT = "NETMORPH_MAX_BYTES"
#: A reading of the available memory is reused this long (seconds) for working sets below
#: :data:`_REUSE_FRACTION` of the limit it gave: reading /proc/meminfo takes 20–80 µs, as long
#: as a small kernel call, and memory cannot fall far enough in that time to matter to them.
_REUSE_SECONDS = 0.1
_REUSE_FRACTION = 1 / 16
#: (monotonic time, bytes) of the last reading.
_last_reading = [-math.inf, 0]


class ResourceLimitError(ValueError):
    """An operation would need more memory than allowed; the message gives the estimate.

    Being a ValueError, it is caught by ``except ValueError``.
    """


def _available_bytes() -> int:
    """MemAvailable from /proc/meminfo, else physical memory, else 4 GiB."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def memory_limit(nbytes: float = math.inf) -> int:
    """Bytes one operation may hold at once: ``$NETMORPH_MAX_BYTES`` when set (an integer),
    else half of the memory available now (a reading up to 0.1 s old when ``nbytes``, the
    working set to check, is below 1/16 of the limit it gave)."""
    raw = getenv(ENV_LIMIT)
    if raw is not None and (raw := raw.strip()):
        try:
            value = int(float(raw))
        except ValueError as exc:
            raise ValueError(f"{ENV_LIMIT} must be a number of bytes, got {raw!r}") from exc
        if value <= 0:
            raise ValueError(f"{ENV_LIMIT} must be positive, got {raw!r}")
        return value
    when, available = _last_reading
    now = time.monotonic()
    if now - when < _REUSE_SECONDS and nbytes <= _REUSE_FRACTION * (available // 2):
        return available // 2
    available = _available_bytes()
    _last_reading[:] = [now, available]
    return available // 2


def format_bytes(n: float) -> str:
    """``n`` bytes as a short human-readable string ("1.5 GiB")."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")


def check_working_set(nbytes: float, what: str) -> None:
    """Raise :class:`ResourceLimitError` when ``nbytes`` (an estimate of what ``what`` holds at
    once) exceeds :func:`memory_limit`."""
    limit = memory_limit(nbytes)
    if nbytes > limit:
        raise ResourceLimitError(
            f"{what} needs about {format_bytes(nbytes)} of memory, more than the "
            f"{format_bytes(limit)} allowed (half of the available memory, or ${ENV_LIMIT})"
        )
