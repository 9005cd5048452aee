"""Range checks for config fields, shared by every layer's `validate()` (one message shape everywhere).

    number(cfg.stride, "fuse.stride", SplatError, lo=1, integer=True)
    -> SplatError("fuse.stride must be an integer >= 1, got 0")

Each check raises the caller's error class (DepthError, SplatError, ReconError) with a one-line message that
names the config key, the allowed range and the value it got; NaN and infinity are refused everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

INT32_MAX = 2**31 - 1


def _num(x: float) -> str:
    """1 -> "1", 1e9 -> "1000000000", 0.5 -> "0.5" (bounds as a person writes them)."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


def _range_text(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{_num(lo)}, {_num(hi)}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {_num(lo)}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {_num(hi)}"
    return "finite"


def number(
    value: Any,
    name: str,
    error: type[Exception],
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
    integer: bool = False,
    optional: bool = False,
    note: str = "",
) -> None:
    """Raise `error` unless `value` is a finite number (an int when `integer`; None when `optional`) in range.

    `lo`/`hi` are inclusive bounds unless `lo_open`/`hi_open`; `note` is appended (e.g. "0 = no limit").
    """
    if value is None and optional:
        return
    kind = "an integer" if integer else "a number"
    what = f"{name} must be {kind} {_range_text(lo, hi, lo_open, hi_open)}" + (f" ({note})" if note else "")
    is_num = isinstance(value, int) or (not integer and isinstance(value, float))
    if isinstance(value, bool) or not is_num or not math.isfinite(value):
        raise error(f"{what}, got {value!r}")
    bad_lo = lo is not None and (value <= lo if lo_open else value < lo)
    bad_hi = hi is not None and (value >= hi if hi_open else value > hi)
    if bad_lo or bad_hi:
        raise error(f"{what}, got {value!r}")
    if integer and abs(value) > INT32_MAX:
        raise error(f"{name} must be at most {INT32_MAX} in size, got {value!r}")


def path_exists(path: Any, is_file: bool = False) -> bool:
    """Whether `path` names an existing file system entry (a file when `is_file`); False for names the
    system cannot even look up (embedded NUL, too long, unreadable parent)."""
    try:
        p = Path(path).expanduser()
        return p.is_file() if is_file else p.exists()
    except (OSError, ValueError, RuntimeError, TypeError):
        return False


def choice(value: Any, name: str, error: type[Exception], options: Iterable[Any]) -> None:
    """Raise `error` unless `value` is one of `options`."""
    opts = tuple(options)
    if not isinstance(value, (str, int, float, bool, type(None))) or value not in opts:
        raise error(f"{name} must be one of {', '.join(map(str, opts))}, got {value!r}")


def flag(value: Any, name: str, error: type[Exception]) -> None:
    """Raise `error` unless `value` is a bool."""
    if not isinstance(value, bool):
        raise error(f"{name} must be true or false, got {value!r}")


def rng_seed(value: Any, name: str, error: type[Exception], allow_random: bool = False) -> None:
    """A random seed: an integer in [0, 2^31 - 1] (-1 = random when `allow_random`)."""
    number(value, name, error, lo=-1 if allow_random else 0, hi=INT32_MAX, integer=True)


def device(value: Any, name: str, error: type[Exception]) -> None:
    """A torch device name that exists here (depth.device.resolve_device's rule and message)."""
    from depth.device import resolve_device
    from depth.errors import DepthError

    if not isinstance(value, str):
        raise error(f"{name} must be a device name (auto, cpu, cuda or cuda:N), got {value!r}")
    try:
        resolve_device(value)
    except DepthError as e:
        raise error(f"{name}: {e}") from None
