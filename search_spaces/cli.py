"""What every command does with bad input: one `error:` line on stderr, exit 2, no traceback."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

from search_spaces.errors import UserError

USAGE_ERROR = 2


def finite_float(text: str) -> float:
    """argparse `type=` for a float flag: a finite number (`nan` and `inf` are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage mistakes end like every other user error (one line, exit 2) and
    whose `--help` shows every default. Every `type=float` flag takes finite numbers only
    (`finite_float`), so `nan` or `inf` never reaches a command."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        # argparse looks a flag's `type` up in this registry (shared by argument groups).
        self.register("type", float, finite_float)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        """As argparse's, with the default appended to the help unless the help states it."""
        action = super().add_argument(*args, **kwargs)
        _state_default(action)
        return action

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"error: {one_line(message)} (see {self.prog} --help)\n")


def _state_default(action: argparse.Action) -> None:
    """Append `(default: X)` to a flag's help, unless it says its default already, has none to
    show (None, a store_true's False) or is --help."""
    text = action.help or ""
    if (action.help is argparse.SUPPRESS or "default" in text or action.default is None
            or action.default is argparse.SUPPRESS or action.nargs == 0 or not action.help):
        return
    action.help = f"{text} (default: %(default)s)"


def one_line(message: object) -> str:
    """A message on one line (whitespace runs collapsed)."""
    return " ".join(str(message).split())


def run_cli(run: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None,
            errors: Mapping[type[BaseException], tuple[int, str]] | None = None) -> int:
    """Run a command's `run(argv)`: a `UserError` (or a type in `errors`, mapped to its exit code
    and message prefix) prints one `error:` line; a closed stdout pipe (`| head`) ends quietly."""
    handled = dict(errors or {})  # the first type matching an error decides: UserError last
    handled.setdefault(UserError, (USAGE_ERROR, ""))
    try:
        return run(argv)
    except tuple(handled) as err:
        code, prefix = next(v for k, v in handled.items() if isinstance(err, k))
        print(f"error: {prefix}{one_line(err)}", file=sys.stderr)
        return code
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
