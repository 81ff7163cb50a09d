"""`python -m nas.latency profile`: a latency table of a search space, measured on this device.

Run it on the device the model will run on, with only this project installed; `python -m
nas.search --latency-table device.json` then predicts latency from the table instead of
measuring it. The table, the figure's definition and the prediction are in `nas.latency.table`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from nas.latency.profile import profile
from nas.models.latency import BACKENDS, PRECISIONS, LatencyBackend, LatencySettings
from search_spaces.cli import OneLineParser, run_cli
from search_spaces.errors import UserError
from search_spaces.files import atomic_write_text
from search_spaces.registry import get_space, list_presets, list_spaces

SMOKE = {"warmup": 1, "runs": 3, "fit": 2, "validate": 3, "passes": 1}


def build_parser() -> OneLineParser:
    p = OneLineParser(prog="python -m nas.latency",
                      description="Latency tables of a search space on this device.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    q = sub.add_parser("profile", help="time every distinct part of a space and write a table",
                       description="Time every distinct part of a space (stem, each block "
                       "configuration at each input size, head) and a validation set of whole "
                       "networks; write the latency table.")
    q.add_argument("--space", default="resnest", help=f"one of {', '.join(list_spaces())}")
    q.add_argument("--preset", default=None, help=f"space bounds: {', '.join(list_presets())} "
                   "(default: the space's own)")
    q.add_argument("--image-size", type=int, required=True, help="input side in px (required)")
    q.add_argument("--num-classes", type=int, default=None,
                   help="classes of the task (default: the preset's)")
    q.add_argument("--in-channels", type=int, default=None,
                   help="input channels of the task (default: the preset's)")
    q.add_argument("--backend", default="torch", help=f"one of {', '.join(BACKENDS)}")
    q.add_argument("--batch-size", type=int, default=1, help="images per timed forward")
    q.add_argument("--threads", type=int, default=1, help="CPU threads (intra-op)")
    q.add_argument("--precision", default="fp32", help=f"one of {', '.join(PRECISIONS)}")
    q.add_argument("--device", default="cpu", help="cpu or cuda")
    q.add_argument("--warmup", type=int, default=None, help="untimed forwards first (default 5)")
    q.add_argument("--runs", type=int, default=None, help="timed forwards (default 20)")
    q.add_argument("--fit", type=int, default=None,
                   help="whole networks the constant is fitted on (default 10)")
    q.add_argument("--validate", type=int, default=None,
                   help="held-out whole networks the error is reported on (default 50)")
    q.add_argument("--passes", type=int, default=None,
                   help="time everything this many times, each pass in a new random order; a "
                        "part's or network's figure is the median over its passes (default 3)")
    q.add_argument("--seed", type=int, default=0, help="seed of the sampled networks")
    q.add_argument("--only-sampled", action="store_true",
                   help="time only the parts of the sampled networks (a partial table: quick "
                        "evidence of the prediction's error; nas.search refuses it)")
    q.add_argument("--out", required=True, help="the table's JSON file (required)")
    q.add_argument("--smoke", action="store_true",
                   help="few runs, 2 + 3 networks, their parts only (tests, a first look)")
    return p


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    space = get_space(args.space, args.preset)
    defaults = {"warmup": 5, "runs": 20, "fit": 10, "validate": 50, "passes": 3}
    if args.smoke:
        defaults = SMOKE
    values = {k: getattr(args, k) if getattr(args, k) is not None else v
              for k, v in defaults.items()}
    if values["passes"] < 1:
        raise UserError(f"--passes must be >= 1, got {values['passes']}")
    if values["fit"] < 1 or values["validate"] < 0:
        raise UserError(f"--fit must be >= 1 and --validate >= 0, got {values['fit']} and "
                        f"{values['validate']}")
    num_classes = args.num_classes or space.preset.num_classes
    in_channels = args.in_channels or space.preset.in_channels
    for flag, value in (("--image-size", args.image_size), ("--num-classes", num_classes),
                        ("--in-channels", in_channels)):
        if value < 1:
            raise UserError(f"{flag} must be positive, got {value}")
    settings = LatencySettings(backend=args.backend, batch_size=args.batch_size,
                               threads=args.threads, precision=args.precision,
                               device=args.device, warmup=values["warmup"], runs=values["runs"])
    out = Path(args.out)
    check_writable(out)
    backend = LatencyBackend(settings)
    table = profile(space, args.space, args.image_size, num_classes, in_channels, backend,
                    fit=values["fit"], validate=values["validate"], seed=args.seed,
                    only_sampled=args.only_sampled or args.smoke, passes=values["passes"])
    if not table.fit and not table.validation.get("networks"):
        raise UserError(f"no network of space {args.space} fits {args.image_size} px")
    atomic_write_text(out, table.to_json())
    v = table.validation
    summary = (f"; on {len(v['networks'])} held-out networks: MAPE {v['mape_percent']:.2f}%, "
               f"Spearman rho {v['spearman']:.3f}" if "mape_percent" in v else "")
    print(f"wrote {out}: {len(table.parts)} parts, constant {table.constant_ms:.4f} ms "
          f"(fitted on {len(table.fit)} networks){summary}")
    return 0


def check_writable(out: Path) -> None:
    """Refuse an --out that cannot be written before any timing starts."""
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; name the table's file")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: directory {parent} does not exist or is not writable")


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
