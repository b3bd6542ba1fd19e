"""Argument checks every stage shares: one rule and one wording for one mistake."""

from __future__ import annotations

from numbers import Integral

from .errors import ConfigError


def check_int(name: str, value: object, minimum: int = 1, *, note: str = "") -> int:
    """``value`` as an int when it is an integer (a NumPy one too, never a bool) >= ``minimum``.

    Anything else is a :class:`ConfigError` naming ``name``: "k must be an integer >= 1,
    got 0". ``note`` follows the bound in the message, e.g. " (0 = automatic)".
    """
    if type(value) is int and value >= minimum:  # the common case, without the ABC check
        return value
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}{note}, got {value!r}")
    return int(value)


def check_optional_int(name: str, value: object, minimum: int = 1) -> int | None:
    """:func:`check_int`, with None passing through as "not given" (the default applies)."""
    return None if value is None else check_int(name, value, minimum, note=" or None")
