"""One clear line instead of a traceback: the CLI's top-level error handler.

Every command runs through :func:`run_command`. Errors a user can cause or fix (bad values, missing
or unreadable files, a full disk, a corrupt checkpoint, a diverged run, a held run lock, Ctrl-C)
become ``latentdiff COMMAND: <what happened>`` on stderr and a non-zero exit status; anything
else is reported the same way as an internal error. ``--debug`` or ``LATENTDIFF_DEBUG=1`` prints
the full traceback instead.
"""

from __future__ import annotations

import errno
import os
import sys
import traceback
from typing import Callable

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


def describe(err: BaseException) -> str:
    """The one-line description of ``err`` for a user."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        where = f" (writing {err.filename})" if err.filename else ""
        return f"no space left on device{where}; nothing was replaced, the previous files are intact"
    if isinstance(err, OSError) and err.strerror:
        where = f": {err.filename}" if err.filename else ""
        return f"{err.strerror.lower()}{where}"
    if isinstance(err, KeyError) and err.args:
        return str(err.args[0])
    text = " ".join(str(err).split())  # multi-line messages (torch's) on one line
    if not text:
        return type(err).__name__
    return text if _expected(err) else f"internal error, {type(err).__name__}: {text}"


def _expected(err: BaseException) -> bool:
    """Errors that describe the input or the machine rather than a bug in latentdiff."""
    expected = (OSError, ValueError, KeyError, RuntimeError, ArithmeticError, ImportError)
    return isinstance(err, expected) or type(err).__name__ in ("SafetensorError", "DecompressionBombError")


def debug_enabled(flag: bool = False) -> bool:
    return flag or os.environ.get("LATENTDIFF_DEBUG", "") not in ("", "0")


def run_command(func: Callable[[], None], command: str, debug: bool = False) -> None:
    """Run ``func()``; on an error print one line naming ``command`` and exit non-zero."""
    try:
        func()
    except SystemExit:
        raise
    except KeyboardInterrupt as err:
        if debug_enabled(debug):
            raise
        message = str(err) or "interrupted"
        print(f"latentdiff {command}: {message}", file=sys.stderr)
        raise SystemExit(getattr(err, "exit_code", EXIT_INTERRUPTED)) from None
    except Exception as err:  # noqa: BLE001 - the one place that turns errors into a line
        if debug_enabled(debug):
            traceback.print_exc()
            raise SystemExit(EXIT_ERROR) from None
        hint = "" if _expected(err) else " (rerun with --debug for the traceback)"
        raise SystemExit(f"latentdiff {command}: {describe(err)}{hint}") from None  # printed, exit status 1
