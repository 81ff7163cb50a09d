"""`resnest-nas COMMAND [ARGS]`: the console script; each command is its `python -m` form.

    resnest-nas search ...   python -m nas.search ...
    resnest-nas pareto ...   python -m analysis.pareto ...
    resnest-nas export ...   python -m nas.export ...
    resnest-nas train ...    python -m trials.train ...
    resnest-nas costs ...    python -m nas.costs ...
    resnest-nas latency ...  python -m nas.latency ...
    resnest-nas supernet ... python -m nas.supernet.train ...

A command's module is imported only when it runs (by name, the way `nas/__init__` resolves its
exports), so `resnest-nas pareto` never pays for starting Ray and every command keeps its own
startup time. This module sits above every layer: it dispatches, nothing imports it.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from search_spaces.cli import USAGE_ERROR

# subcommand -> (module whose main(argv) runs it, what it does)
COMMANDS = {
    "search": ("nas.search.cli", "search architectures for accuracy versus cost (Ray, Optuna)"),
    "pareto": ("analysis.pareto", "the Pareto front of finished searches, plots, importances"),
    "export": ("nas.export.cli", "export a trial or a training run as a standalone PyTorch module"),
    "train": ("trials.train", "train (or fine-tune) one architecture standalone"),
    "costs": ("nas.costs", "parameters, MACs, peak memory and latency of one architecture"),
    "latency": ("nas.latency.cli", "latency tables of a search space on this device (profile)"),
    "supernet": ("nas.supernet.train", "train a supernet for one-shot search (Ray Train)"),
}


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: resnest-nas COMMAND [ARGS]  (resnest-nas COMMAND --help for its options)",
             "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if args else sys.stderr)
        return 0 if args else USAGE_ERROR
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; commands: {', '.join(COMMANDS)} "
              "(see resnest-nas --help)", file=sys.stderr)
        return USAGE_ERROR
    command = importlib.import_module(COMMANDS[name][0])
    return int(command.main(rest))


if __name__ == "__main__":
    sys.exit(main())
