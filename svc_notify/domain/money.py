"""Money amounts in minor units, written for people."""

from __future__ import annotations

#: ISO 4217 minor-unit exponents that differ from 2.
_EXPONENTS = {"JPY": 0, "KRW": 0, "KWD": 3, "BHD": 3, "JOD": 3, "OMR": 3, "TND": 3}


def format_money(currency: str, minor_units: int) -> str:
    """Return ``"EGP 150.25"`` for 15025 piastres; integers only, no floats."""
    exponent = _EXPONENTS.get(currency.upper(), 2)
    sign = "-" if minor_units < 0 else ""
    units, fraction = divmod(abs(minor_units), 10**exponent)
    amount = f"{units}.{fraction:0{exponent}d}" if exponent else str(units)
    return f"{currency.upper()} {sign}{amount}".strip()
