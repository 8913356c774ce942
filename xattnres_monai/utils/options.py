"""Checkers for configuration values: constructor options of the networks, blocks and bundle components.

Bundle configurations reach the constructors through ``python -m monai.bundle run --key value``, whose
command-line parser (``fire``) turns ``True`` / ``False`` / numbers into Python values but passes ``false``,
``true``, ``none`` ... as *strings*; JSON configs may carry strings where a number is meant. A string is
truthy, so ``skip="false"`` used as a bool silently means ``skip=True``. Every option therefore goes through
one of these checkers, which either return the value in its proper type or raise a one-line
:class:`ValueError` naming the option, the value given and what is expected::

    >>> as_bool("FALSE", "XAttnResUNet: skip")
    False
    >>> as_bool("maybe", "XAttnResUNet: skip")
    Traceback (most recent call last):
    ValueError: XAttnResUNet: skip must be true or false (also 1/0, yes/no), got 'maybe'.

Conventions:

* bools: ``True`` / ``False``; the strings ``true`` / ``false``, ``yes`` / ``no``, ``1`` / ``0`` in any case
  (surrounding spaces ignored); the numbers 0 and 1. Anything else (``""``, ``"none"``, ``2``, ``None``) is refused.
* ints: Python / NumPy integers; strings of decimal digits (optional sign, surrounding spaces) are *parsed*
  (``"9"`` -> 9). Bools and floats (also ``2.0``) are refused.
* floats: real numbers (not bools); numeric strings are parsed (``"0.5"``, ``"1e-4"``); NaN and infinities refused.
* choices: strings matched case-insensitively (``"FULL"`` -> ``"full"``) through
  :func:`monai.utils.look_up_option`; the canonical spelling is returned.
* sequences: lists / tuples (not strings or mappings) whose items are checked one by one.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Mapping
from typing import Any, Iterable, List, Optional, Sequence, Union

__all__ = [
    "as_bool",
    "as_choice",
    "as_float",
    "as_float_sequence",
    "as_int",
    "as_int_sequence",
    "as_optional_path",
]

_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")
_INT_RE = re.compile(r"[+-]?\d+")


def _fail(name: str, expected: str, value: Any) -> ValueError:
    return ValueError(" ".join(f"{name} must be {expected}, got {value!r}.".split()))


def as_bool(value: Any, name: str) -> bool:
    """``value`` as a bool, accepting the spellings a command line gives (``True``, ``"false"``, ``"0"``, ``"YES"``).

    ``python -m monai.bundle run --network_def#skip false`` passes the *string* ``"false"`` (only ``True`` /
    ``False`` are parsed as Python literals), and ``"false"`` is truthy: every bool option goes through this.

    Args:
        value: the value given.
        name: the option, as the error message should name it (e.g. ``"XAttnResUNet: skip"``).

    Raises:
        ValueError: naming the option, for anything that is not clearly true or false.
    """
    if isinstance(value, bool):
        return value
    if getattr(value, "shape", None) == () and str(getattr(value, "dtype", "")) in ("bool", "torch.bool"):
        return bool(value)  # numpy.bool_, 0-d bool array / tensor
    if isinstance(value, numbers.Real) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise _fail(name, "true or false (also 1/0, yes/no)", value)


def _range_text(low: Optional[float], high: Optional[float], low_open: bool = False, high_open: bool = False) -> str:
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {low}"
    if high is not None:
        return f" {'<' if high_open else '<='} {high}"
    return ""


def as_int(value: Any, name: str, min: Optional[int] = None, max: Optional[int] = None) -> int:
    """``value`` as an int in ``[min, max]``; a string of decimal digits (``"9"``, ``" -2 "``) is parsed.

    Bools, floats (also integral ones such as ``2.0``) and other strings are refused.

    Raises:
        ValueError: ``"<name> must be an integer >= <min>, got <value>."``
    """
    expected = "an integer" + _range_text(min, max)
    if isinstance(value, bool):
        raise _fail(name, expected, value)
    if isinstance(value, numbers.Integral):
        number = int(value)
    elif isinstance(value, str) and _INT_RE.fullmatch(value.strip()):
        number = int(value.strip())
    else:
        raise _fail(name, expected, value)
    if (min is not None and number < min) or (max is not None and number > max):
        raise _fail(name, expected, value)
    return number


def as_float(
    value: Any,
    name: str,
    min: Optional[float] = None,
    max: Optional[float] = None,
    min_open: bool = False,
    max_open: bool = False,
) -> float:
    """``value`` as a finite float in the range given; numeric strings (``"0.5"``, ``"1e-4"``) are parsed.

    Args:
        value: the value given.
        name: the option, as the error message should name it.
        min, max: the bounds (``None``: unbounded).
        min_open, max_open: exclude the bound itself (``min=0, min_open=True``: strictly positive).

    Raises:
        ValueError: ``"<name> must be a number in [0, 1), got <value>."``
    """
    expected = "a number" + _range_text(min, max, min_open, max_open)
    if isinstance(value, bool):
        raise _fail(name, expected, value)
    number: Optional[float] = None
    if isinstance(value, numbers.Real):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None or not math.isfinite(number):
        raise _fail(name, expected, value)
    if min is not None and (number < min or (min_open and number == min)):
        raise _fail(name, expected, value)
    if max is not None and (number > max or (max_open and number == max)):
        raise _fail(name, expected, value)
    return number


def as_choice(value: Any, name: str, choices: Iterable[str], case_sensitive: bool = False) -> str:
    """``value`` as one of ``choices`` (matched case-insensitively unless ``case_sensitive``); the canonical spelling.

    The look-up is :func:`monai.utils.look_up_option`; its (multi-line) message is replaced by one line that
    lists the choices.

    Raises:
        ValueError: ``"<name> must be one of ('none', 'encoder', ...), got 'middle'."``
    """
    choices = tuple(choices)
    expected = f"one of {choices}"
    if not isinstance(value, str):
        raise _fail(name, expected, value)
    table = {(c if case_sensitive else c.lower()): c for c in choices}
    key = value.strip() if case_sensitive else value.strip().lower()
    from monai.utils import look_up_option  # not at import time: data preparation starts without MONAI / torch

    found = look_up_option(key, table, default=None)
    if found is None:
        raise _fail(name, expected, value)
    return found


def _as_sequence(value: Any, name: str, what: str, min_length: int, length: Optional[int]) -> list:
    size = f"exactly {length}" if length is not None else (f"at least {min_length}" if min_length else "")
    expected = f"a list of {size} {what}".replace("  ", " ")
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        # tuples, lists, torch.Size; numpy arrays and tensors are not Sequences: convert them
        if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
            converted = value.tolist()
            if isinstance(converted, list):
                return _as_sequence(converted, name, what, min_length, length)
        raise _fail(name, expected, value)
    items = list(value)
    if len(items) < min_length or (length is not None and len(items) != length):
        raise _fail(name, expected, value)
    return items


def as_int_sequence(
    value: Any,
    name: str,
    min: Optional[int] = None,
    max: Optional[int] = None,
    min_length: int = 0,
    length: Optional[int] = None,
) -> List[int]:
    """``value`` as a list of ints, each checked with :func:`as_int` (``name[i]`` in the message).

    A string (even ``"16,32"``) or a single number is refused: iterating a string would yield its characters.

    Raises:
        ValueError: for a value that is not a list / tuple, of the wrong length, or with a bad item.
    """
    what = "integers" + _range_text(min, max)
    items = _as_sequence(value, name, what, min_length, length)
    return [as_int(item, f"{name}[{i}]", min=min, max=max) for i, item in enumerate(items)]


def as_float_sequence(
    value: Any,
    name: str,
    min: Optional[float] = None,
    max: Optional[float] = None,
    min_open: bool = False,
    max_open: bool = False,
    min_length: int = 0,
    length: Optional[int] = None,
) -> List[float]:
    """``value`` as a list of floats, each checked with :func:`as_float` (``name[i]`` in the message)."""
    what = "numbers" + _range_text(min, max, min_open, max_open)
    items = _as_sequence(value, name, what, min_length, length)
    return [as_float(item, f"{name}[{i}]", min, max, min_open, max_open) for i, item in enumerate(items)]


def as_optional_path(value: Any, name: str) -> Optional[Union[str, "os.PathLike[str]"]]:
    """``value`` unchanged if it is ``None``, a non-empty string or an ``os.PathLike``; otherwise refused.

    Whether the file exists is left to the code that reads it (which names the file).
    """
    if value is None or isinstance(value, os.PathLike) or (isinstance(value, str) and value.strip()):
        return value
    raise _fail(name, "a file path or null", value)
