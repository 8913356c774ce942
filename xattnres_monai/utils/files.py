"""Safe output helpers shared by every writer in the project, and the common command-line error handling.

Every file the project writes goes through :func:`atomic_write`: the content is written to a temporary file in the
destination folder and moved into place with :func:`os.replace` only when writing succeeded, so a crash or an error
never leaves a half-written datalist, checkpoint report or NIfTI file behind, and an existing file is never replaced
unless the caller asked for it.
"""

from __future__ import annotations

import csv
import errno
import functools
import json
import os
import secrets
import sys
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, NoReturn, Optional, Sequence, TypeVar, Union

# ``as_bool`` lives with the other option checkers (utils/options.py); re-exported where writers and handlers take it
from xattnres_monai.utils.options import as_bool  # noqa: F401

__all__ = [
    "InputError",
    "InputErrorGroup",
    "atomic_write",
    "check_writable",
    "cli_main",
    "exit_on_user_error",
    "find_user_error",
    "raise_if_any",
    "report_and_exit",
    "write_csv_atomic",
    "write_json_atomic",
]

PathLike = Union[str, "os.PathLike[str]"]
F = TypeVar("F", bound=Callable[..., Any])


def _one_line(text: object) -> str:
    """Collapse ``text`` to a single line (messages of third-party exceptions may span several)."""
    return " ".join(str(text).split())


class InputError(ValueError):
    """An input file or folder that cannot be used, as one line ``"<path>: <problem>"``.

    Args:
        path: the offending file or folder.
        problem: what is wrong with it (newlines are collapsed so that the message stays on one line).

    Example::

        >>> str(InputError("data/img0001.nii.gz", "expected a 3D volume, got shape (4, 4)"))
        'data/img0001.nii.gz: expected a 3D volume, got shape (4, 4)'
    """

    def __init__(self, path: PathLike, problem: str) -> None:
        self.path = str(path)
        self.problem = _one_line(problem)
        super().__init__(f"{self.path}: {self.problem}")


class InputErrorGroup(InputError):
    """Several :class:`InputError` found in one pass, so that all of them can be reported at once.

    ``str()`` gives one line per error; :func:`cli_main` prints each with an ``error:`` prefix.

    Args:
        errors: the individual errors (at least one).

    Example::

        >>> group = InputErrorGroup([InputError("a.nii.gz", "zero-byte file"), InputError("b.nii.gz", "not 3D")])
        >>> print(group)
        a.nii.gz: zero-byte file
        b.nii.gz: not 3D
    """

    def __init__(self, errors: Sequence[InputError]) -> None:
        if not errors:
            raise ValueError("InputErrorGroup needs at least one error.")
        self.errors: List[InputError] = list(errors)
        ValueError.__init__(self, "\n".join(str(e) for e in self.errors))
        self.path = self.errors[0].path
        self.problem = self.errors[0].problem

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


def raise_if_any(errors: Sequence[InputError]) -> None:
    """Raise ``errors[0]`` if there is exactly one error, an :class:`InputErrorGroup` if several, else nothing."""
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise InputErrorGroup(errors)


def _exists_error(path: Path) -> FileExistsError:
    return FileExistsError(errno.EEXIST, "already exists (pass overwrite=True / --overwrite to replace it)", str(path))


def check_writable(paths: Iterable[PathLike], overwrite: bool = False) -> None:
    """Fail early, before anything is written, when an output already exists and ``overwrite`` is False.

    Args:
        paths: the files a command is about to write.
        overwrite: whether replacing existing files is allowed.

    Raises:
        FileExistsError: naming the first existing file (and how many others exist).

    Example::

        >>> check_writable(["out/datalist.json", "out/labels_9class/label0001.nii.gz"], overwrite=False)
    """
    if overwrite:
        return
    existing = [Path(p) for p in paths if os.path.lexists(p)]
    if existing:
        err = _exists_error(existing[0])
        if len(existing) > 1:
            err.strerror = f"{err.strerror}; {len(existing) - 1} more output file(s) also exist"
        raise err


@contextmanager
def atomic_write(path: PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Context manager yielding a temporary path to write ``path`` safely.

    The temporary file lies in the same folder (so the final move is an atomic rename on the same file system) and
    its name *ends with the full destination name*, e.g. ``.tmp-1a2b3c4d-label0001.nii.gz``, so writers that pick
    the format from the suffix (``.nii.gz``, ``.csv``, ``.json``) choose the right one. The file is moved into place
    with :func:`os.replace` when the block exits without an exception; on any exception the temporary file is
    removed and the destination is untouched (an :class:`OSError` of the writer, e.g. a full disk, is raised again
    naming the destination). Missing parent folders are created. Only a process killed while writing (``SIGKILL``,
    power cut) can leave the hidden temporary file behind; the destination is never partial.

    Args:
        path: the destination file.
        overwrite: replace ``path`` if it exists; when False an existing file raises :class:`FileExistsError`
            both on entry and, should one appear meanwhile, at the final move (which then does not replace it).

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.

    Example::

        >>> with atomic_write("out/label0001.nii.gz") as tmp:
        ...     nib.save(nib.Nifti1Image(label, affine), tmp)
    """
    path = Path(path)
    if not overwrite and os.path.lexists(path):
        raise _exists_error(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{secrets.token_hex(4)}-{path.name}"
    try:
        yield tmp
        _fsync(tmp)
        _commit(tmp, path, overwrite)
        _fsync(path.parent)
    except BaseException as err:
        with suppress(OSError):
            if os.path.lexists(tmp):
                os.remove(tmp)
        if isinstance(err, OSError) and err.filename in (None, str(tmp)):
            # name the destination, not the temporary file (or nothing): "out/x.nii.gz: No space left on device"
            raise OSError(err.errno, err.strerror or _one_line(err), str(path)) from err
        raise


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file or a folder) to disk, best effort: the rename then survives a power cut as well."""
    with suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _commit(tmp: Path, path: Path, overwrite: bool) -> None:
    """Move ``tmp`` to ``path``; without ``overwrite`` use a hard link, which fails atomically if ``path`` exists."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise _exists_error(path) from None
    except OSError:  # file systems without hard links: best effort
        if os.path.lexists(path):
            raise _exists_error(path) from None
        os.replace(tmp, path)
        return
    os.remove(tmp)


def write_json_atomic(path: PathLike, data: Any, overwrite: bool = False, indent: int = 2, **json_kwargs: Any) -> Path:
    """Write ``data`` as JSON (UTF-8, trailing newline) to ``path`` atomically.

    Args:
        path: destination file.
        data: a JSON-serialisable object.
        overwrite: replace an existing file.
        indent: indentation passed to :func:`json.dump`.
        json_kwargs: other :func:`json.dump` arguments (e.g. ``allow_nan=False`` for strict JSON).

    Returns:
        The destination path.

    Example::

        >>> write_json_atomic("out/datalist.json", {"training": []}, overwrite=True)
        PosixPath('out/datalist.json')
    """
    with atomic_write(path, overwrite=overwrite) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=indent, **json_kwargs)
            f.write("\n")
    return Path(path)


def write_csv_atomic(
    path: PathLike,
    rows: Iterable[Mapping[str, Any]],
    fieldnames: Optional[Sequence[str]] = None,
    overwrite: bool = False,
) -> Path:
    """Write rows of dicts as a CSV file with a header line, atomically.

    Args:
        path: destination file.
        rows: one mapping per row.
        fieldnames: the columns in order; by default the keys of all rows in order of first appearance.
            Keys missing from a row are written empty.
        overwrite: replace an existing file.

    Returns:
        The destination path.

    Example::

        >>> write_csv_atomic("out/per_case.csv", [{"case": "0001", "dice": 0.9}], overwrite=True)
        PosixPath('out/per_case.csv')
    """
    rows = list(rows)
    if fieldnames is None:
        columns: Dict[str, None] = {}
        for row in rows:
            columns.update(dict.fromkeys(row))
        fieldnames = list(columns)
    with atomic_write(path, overwrite=overwrite) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(fieldnames), restval="")
            writer.writeheader()
            writer.writerows(rows)
    return Path(path)


#: errors that are the user's data, files or environment, not bugs: reported as one line each, exit code 2.
USER_ERRORS = (InputError, OSError)


def find_user_error(err: BaseException) -> Optional[BaseException]:
    """The :data:`USER_ERRORS` instance in ``err``'s chain of causes, or ``None``.

    MONAI wraps errors raised while instantiating a config component or applying a transform in a ``RuntimeError``;
    the original error is its ``__cause__`` (or ``__context__``).

    Example::

        >>> try:
        ...     try:
        ...         raise InputError("a.nii.gz", "zero-byte file")
        ...     except InputError as e:
        ...         raise RuntimeError("applying transform") from e
        ... except RuntimeError as wrapped:
        ...     str(find_user_error(wrapped))
        'a.nii.gz: zero-byte file'
    """
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, USER_ERRORS):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _error_lines(err: BaseException) -> List[str]:
    """The message(s) of an expected error, one line each."""
    if isinstance(err, InputErrorGroup):
        return [str(e) for e in err.errors]
    if isinstance(err, OSError) and err.filename is not None:
        return [_one_line(f"{err.filename}: {err.strerror or err}")]
    return [_one_line(err)]


def report_and_exit(err: BaseException, code: int = 2) -> NoReturn:
    """Print ``err`` as ``error: <line>`` lines on stderr and raise ``SystemExit(code)`` (no stack trace)."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", None) or []):
        with suppress(Exception):
            bar.close()  # a progress bar (Ignite's ProgressBar) would leave the cursor in the middle of a line
    sys.stdout.flush()
    for line in _error_lines(err):
        print(f"error: {line}", file=sys.stderr)
    sys.stderr.flush()
    raise SystemExit(code) from None


@contextmanager
def exit_on_user_error(code: int = 2) -> Iterator[None]:
    """Turn a user error raised in the block (:data:`USER_ERRORS`, also when wrapped) into ``error:`` lines + exit.

    The one way the package's commands and bundle components end a run on bad input: the message of the error
    (one line per file for an :class:`InputErrorGroup`) is printed to stderr with an ``error:`` prefix, without a
    stack trace, and ``SystemExit(code)`` is raised. Any other exception propagates unchanged (it is a bug, and its
    traceback is wanted).

    Example::

        >>> with exit_on_user_error():
        ...     raise InputError("data/", "empty folder")  # prints "error: data/: empty folder", exits with code 2
    """
    try:
        yield
    except Exception as err:
        found = find_user_error(err)
        if found is None:
            raise
        report_and_exit(found, code)


def cli_main(fn: F) -> F:
    """Decorator for command-line entry points: expected errors become ``error: <message>`` and exit code 2.

    :class:`InputError` (each error of an :class:`InputErrorGroup` on its own line) and :class:`OSError` (a file
    that exists already, is missing, cannot be written, a full disk ...) are printed to stderr without a stack
    trace and the process exits with code 2 (the code ``argparse`` uses for usage errors), see
    :func:`exit_on_user_error`. Anything else propagates unchanged: it is a bug, and its traceback is wanted. On
    success the wrapped function's return value is returned.

    Args:
        fn: the entry point, typically ``main(argv: Optional[Sequence[str]] = None)``.

    Example::

        >>> @cli_main
        ... def main(argv=None):
        ...     raise InputError("data/", "empty folder")
        >>> main()  # prints "error: data/: empty folder" to stderr, then raises SystemExit(2)
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with exit_on_user_error():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]

