"""The one-line errors every config and constructor gives: the key, the bad value, what is
allowed. Each rule of the package calls these instead of writing its own message.

    check_keys("optim", {"lrr": 1}, {"lr", ...})
        -> ValueError: optim got unknown key(s) ['lrr']; allowed: ['lr', ...]
    check_number("lr", -1, gt=0)   -> ValueError: lr=-1 is invalid; allowed: a number > 0
    check_number("bits", 9, ge=1, le=8, integer=True)
        -> ValueError: bits=9 is invalid; allowed: an int in 1..8

Standard library only (asrquant.quant uses it and imports torch alone).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator


def invalid(where: str, value, allowed: str) -> ValueError:
    return ValueError(f"{where}={value!r} is invalid; allowed: {allowed}")


def check_keys(where: str, d, allowed: Iterable[str]) -> None:
    """`d` (a mapping) has no key outside `allowed`."""
    allowed = set(allowed)
    unknown = sorted(set(d) - allowed, key=str)
    if unknown:
        raise ValueError(f"{where} got unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def check_choice(where: str, value, allowed: Iterable) -> None:
    allowed = list(allowed)
    if isinstance(value, bool) or value not in allowed:
        raise invalid(where, value, str(allowed))


def check_bool(where: str, value) -> None:
    if not isinstance(value, bool):
        raise invalid(where, value, "true or false")


def check_number(where: str, value, *, gt: float | None = None, ge: float | None = None,
                 le: float | None = None, integer: bool = False, none_ok: bool = False) -> None:
    """An int (or, unless `integer`, a finite float) within the bounds given; bools refused."""
    if value is None and none_ok:
        return
    kind = "an int" if integer else "a number"
    bounds = [f"> {gt:g}" if gt is not None else "", f">= {ge:g}" if ge is not None else "",
              f"<= {le:g}" if le is not None else ""]
    allowed = " ".join([kind, " and ".join(b for b in bounds if b)]).strip()
    if integer and gt is None and ge is not None and le is not None:
        allowed = f"an int in {ge:g}..{le:g}"
    if none_ok:
        allowed = f"null or {allowed}"
    types = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, types) or (
            isinstance(value, float) and not math.isfinite(value)) or (
            gt is not None and value <= gt) or (ge is not None and value < ge) or (
            le is not None and value > le):
        raise invalid(where, value, allowed)


@contextlib.contextmanager
def config_key(prefix: str) -> Iterator[None]:
    """Errors raised inside name the config key they came from: a constructor's
    "lr=-1 is invalid; ..." becomes "optim.lr=-1 is invalid; ..." under config_key("optim.")."""
    try:
        yield
    except ValueError as e:
        raise ValueError(f"{prefix}{e}") from None
