"""Ending an Ignite run on a user error: ``error: <file>: <problem>`` lines and exit code 2, no traceback.

Installed by every handler of this package that reads or writes user files (checkpoints, reports); the error types
are those of :data:`xattnres_monai.utils.files.USER_ERRORS`.
"""

from __future__ import annotations

from ignite.engine import Engine, Events

from xattnres_monai.utils.files import find_user_error, report_and_exit

__all__ = ["exit_on_user_errors"]


def exit_on_user_errors(engine: Engine) -> None:
    """Make a user error raised during ``engine.run`` end the process with ``error:`` lines and exit code 2.

    Ignite hands an exception raised in a run to the ``EXCEPTION_RAISED`` handlers, and MONAI's
    ``StatsHandler`` logs it with its stack trace. This installs, first in line, a handler that reports a
    :data:`~xattnres_monai.utils.files.USER_ERRORS` error (bad input file or checkpoint, existing result, full
    disk ...; also when wrapped by MONAI) as ``error: <file>: <problem>`` and raises ``SystemExit(2)``; other
    exceptions go on to the other handlers (bugs keep their traceback). Installed once per engine (a second call
    does nothing) by the handlers of :mod:`xattnres_monai.handlers`.
    """
    if getattr(engine, "_xattnres_exit_on_user_errors", False):
        return

    def on_exception(engine_: Engine, err: BaseException) -> None:
        if isinstance(err, SystemExit):
            raise err
        found = find_user_error(err)
        if found is not None:
            report_and_exit(found)
        handlers = getattr(engine_, "_event_handlers", {}).get(Events.EXCEPTION_RAISED, [])
        if not any(h[0] is not on_exception for h in handlers):
            raise err  # nobody else will

    engine.add_event_handler(Events.EXCEPTION_RAISED, on_exception)
    handlers = getattr(engine, "_event_handlers", {}).get(Events.EXCEPTION_RAISED)
    if handlers:  # first in line, before StatsHandler's traceback logging
        handlers.insert(0, handlers.pop())
    engine._xattnres_exit_on_user_errors = True  # type: ignore[attr-defined]
