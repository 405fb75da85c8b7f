"""Argument checks for jdo's factories: one place, one exception type per kind of mistake.

A value of the right type outside what a factory allows raises :class:`InvalidArgument` (a
``ValueError``); a value of the wrong type raises :class:`WrongType` (a ``TypeError``). Both
carry the parameter's name in ``argument`` and the rest of the message in ``message``, so the
runner can name the config key (``compression.ratio: must be in (0, 1], got 1.5``) while a
Python caller reads ``ratio must be in (0, 1], got 1.5``.

Checks run in factories, on the host, never in traced code.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Sequence
from typing import Any


class ArgumentError(Exception):
    """Base of jdo's argument errors: ``argument`` names the parameter, ``message`` says what
    is allowed and what was given."""

    def __init__(self, argument: str, message: str):
        super().__init__(f"{argument} {message}")
        self.argument, self.message = argument, message


class InvalidArgument(ArgumentError, ValueError):
    """A value outside what is allowed (a negative step, a ratio above 1, an unknown name)."""


class WrongType(ArgumentError, TypeError):
    """A value of the wrong type (a string where a number goes, an int where a list goes)."""


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def integer(name: str, value: Any, *, minimum: int | None = None) -> int:
    """``value`` as an int; ``minimum``: the smallest allowed."""
    if not _is_int(value):
        raise WrongType(name, f"must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        what = {0: "a non-negative integer", 1: "a positive integer"}.get(
            minimum, f"an integer >= {minimum}"
        )
        raise InvalidArgument(name, f"must be {what}, got {value!r}")
    return int(value)


def positive_int(name: str, value: Any) -> int:
    return integer(name, value, minimum=1)


def non_negative_int(name: str, value: Any) -> int:
    return integer(name, value, minimum=0)


def number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a float in the interval ``low..high`` (each end closed unless ``*_open``;
    None: unbounded)."""
    if not _is_real(value):
        raise WrongType(name, f"must be a number, got {value!r}")
    x = float(value)
    below = low is not None and (x <= low if low_open else x < low)
    above = high is not None and (x >= high if high_open else x > high)
    if below or above or x != x:  # x != x: NaN
        raise InvalidArgument(
            name, f"must be {_interval(low, high, low_open, high_open)}, got {value!r}"
        )
    return x


def _interval(low, high, low_open, high_open) -> str:
    if low is None and high is None:
        return "a number (not NaN)"
    if high is None:
        if low == 0:
            return "a positive number" if low_open else "a non-negative number"
        return f"{'>' if low_open else '>='} {low:g}"
    if low is None:
        return f"{'<' if high_open else '<='} {high:g}"
    return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def positive(name: str, value: Any) -> float:
    return number(name, value, low=0, low_open=True)


def non_negative(name: str, value: Any) -> float:
    return number(name, value, low=0)


def probability(name: str, value: Any, *, allow_zero: bool = True) -> float:
    """A number in [0, 1] (or (0, 1] without ``allow_zero``)."""
    return number(name, value, low=0, high=1, low_open=not allow_zero)


def one_of(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    allowed = tuple(allowed)
    if value not in allowed:
        raise InvalidArgument(
            name, f"must be one of {', '.join(map(repr, allowed))}; got {value!r}"
        )
    return value


def int_sequence(name: str, value: Any, *, minimum: int = 1, allow_empty: bool = True):
    """A list/tuple of ints, each ``>= minimum``, as a tuple."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise WrongType(name, f"must be a list of integers, got {value!r}")
    if not value and not allow_empty:
        raise InvalidArgument(name, "must not be empty")
    for v in value:
        if not _is_int(v) or v < minimum:
            raise InvalidArgument(
                name, f"must be a list of integers >= {minimum}, got {list(value)!r}"
            )
    return tuple(int(v) for v in value)


def optimizer(name: str, value: Any):
    """An ``optax.GradientTransformation`` (the only kind of optimizer jdo takes)."""
    import optax

    if not isinstance(value, optax.GradientTransformation):
        raise WrongType(
            name, f"must be an optax.GradientTransformation, got {type(value).__name__}"
        )
    return value


def function(name: str, value: Any) -> Callable:
    if not callable(value):
        raise WrongType(name, f"must be callable, got {type(value).__name__}")
    return value
