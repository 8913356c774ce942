"""Utilities shared across the project: atomic file writers and command-line error handling."""

from .files import (
    InputError,
    InputErrorGroup,
    atomic_write,
    check_writable,
    cli_main,
    raise_if_any,
    write_csv_atomic,
    write_json_atomic,
)

__all__ = [
    "InputError",
    "InputErrorGroup",
    "atomic_write",
    "check_writable",
    "cli_main",
    "raise_if_any",
    "write_csv_atomic",
    "write_json_atomic",
]
