"""How the scripts start and fail: `run(main)` in place of absl's `app.run(main)`.

Bad input (a flag, a file, a checkpoint, an output path) ends a script with exit code 1 and one line on stderr,
`<script>: error: <cause>`, instead of a traceback or the usage text:

- flag parsing errors (unknown flags, values out of their bounds);
- exceptions that mean bad input, raised by the script's validation or the library: ValueError (the library's
  CheckpointError and OutputError among them), OSError with a file name (a missing, unreadable or unwritable
  path), absl's UsageError.

Anything else is a bug and keeps its traceback. `--verbosity=1` logs the traceback of a reported error too.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from typing import Callable, NoReturn, Sequence

from absl import app, flags, logging


def _prog() -> str:
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "kinetics_jax"


def fail(message: object) -> NoReturn:
    """Prints `<script>: error: <message>` (on one line) to stderr and exits with code 1."""
    text = " ".join(str(message).split("\n")).strip()
    print(f"{_prog()}: error: {text}", file=sys.stderr, flush=True)
    # The failed work's leftovers are not new errors: orbax, for one, abandons the reads of a damaged checkpoint
    # as coroutines that raised, and Python reports each ("Exception ignored in ...") when it finalizes them on
    # the way out; threads of a failed job may raise once its resources are gone.
    sys.unraisablehook = lambda unraisable: None
    threading.excepthook = lambda args: None
    warnings.simplefilter("ignore")
    sys.exit(1)


def _is_bad_input(error: BaseException) -> bool:
    if isinstance(error, (ValueError, app.UsageError)):
        return True
    return isinstance(error, OSError) and error.filename is not None


def _describe(error: BaseException) -> str:
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.strerror or error}: {error.filename}"
    return str(error) or type(error).__name__


def _parse_flags(argv: Sequence[str]) -> list[str]:
    try:
        return flags.FLAGS(list(argv))
    except flags.Error as e:
        fail(e)


def run(main: Callable[[list[str]], int | None]) -> NoReturn:
    """absl's app.run(main), reporting bad input as one line (see the module docstring)."""

    def checked(argv: list[str]) -> int | None:
        try:
            return main(argv)
        except Exception as e:  # noqa: BLE001 - sorted into bad input (one line) and bugs (re-raised)
            if not _is_bad_input(e):
                raise
            logging.debug("traceback of the error below", exc_info=True)
            fail(_describe(e))

    app.run(checked, flags_parser=_parse_flags)


def define_int_list(name: str, default: Sequence[int] | None, help: str, *, lower_bound: int = 1
                    ) -> flags.FlagHolder[list[str] | None]:
    """A comma-separated list flag of integers >= lower_bound, checked when the flags are parsed; read it with
    `int_list(holder)`."""
    holder = flags.DEFINE_list(name, None if default is None else [str(v) for v in default], help)

    def valid(values: list[str] | None) -> bool:
        try:
            return values is None or all(int(v) >= lower_bound for v in values)
        except ValueError:
            return False

    flags.register_validator(name, valid, f"--{name} must be integers >= {lower_bound}, separated by commas")
    return holder


def int_list(holder: flags.FlagHolder[list[str] | None]) -> list[int] | None:
    """The integers of a `define_int_list` flag (None when unset)."""
    return None if holder.value is None else [int(v) for v in holder.value]
