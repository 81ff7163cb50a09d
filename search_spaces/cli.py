"""What every command does with bad input: one `error:` line on stderr, exit 2, no traceback."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import NoReturn

from search_spaces.errors import UserError

USAGE_ERROR = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage mistakes end like every other user error (one line, exit 2) and
    whose `--help` shows every default."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"error: {message} (see {self.prog} --help)\n")


def one_line(message: object) -> str:
    """A message on one line (whitespace runs collapsed)."""
    return " ".join(str(message).split())


def run_cli(run: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None,
            errors: Mapping[type[BaseException], tuple[int, str]] | None = None) -> int:
    """Run a command's `run(argv)`: a `UserError` (or a type in `errors`, mapped to its exit code
    and message prefix) prints one `error:` line; a closed stdout pipe (`| head`) ends quietly."""
    handled = {UserError: (USAGE_ERROR, ""), **(errors or {})}
    try:
        return run(argv)
    except tuple(handled) as err:
        code, prefix = next(v for k, v in handled.items() if isinstance(err, k))
        print(f"error: {prefix}{one_line(err)}", file=sys.stderr)
        return code
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
