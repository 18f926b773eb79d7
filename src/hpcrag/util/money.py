"""Dollars as people read them: never rounded to zero, however small."""

from __future__ import annotations

import math


def money(usd: float | None) -> str:
    """Dollars with at least two decimals and four significant digits: 20.00, 0.0123, 0.000001."""
    if usd is None:
        return "-"
    if usd == 0 or not math.isfinite(usd):
        return f"{usd:.2f}"
    if abs(usd) < 1e-9:
        return f"{usd:.3g}"
    decimals = max(2, 3 - math.floor(math.log10(abs(usd))))
    text = f"{usd:.{decimals}f}".rstrip("0")
    whole, _, fraction = text.partition(".")
    return f"{whole}.{fraction.ljust(2, '0')}"
