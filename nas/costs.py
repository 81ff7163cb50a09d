"""`python -m nas.costs ARCH`: parameters, MACs, peak memory and latency of one architecture.

Definitions of each figure are in `nas.models.costs`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from nas.models.costs import DEFAULT_BATCH, CostRecord, measure_costs
from search_spaces.cli import OneLineParser, run_cli


def _format(record: CostRecord) -> str:
    lines = [
        f"params              {record.params / 1e6:.2f} M ({record.params})",
        f"MACs @{record.image_size}px         {record.macs / 1e9:.3f} G per image",
    ]
    if record.peak_memory_bytes is not None:
        lines.append(f"peak train-forward  {record.peak_memory_bytes / 2**20:.1f} MiB "
                     f"(batch {record.batch_size}, {record.device})")
    if record.latency_ms is not None:
        lines.append(f"latency (batch 1)   {record.latency_ms:.2f} ms on {record.device}")
        lines.append(f"throughput          {record.throughput_images_per_s:.1f} images/s "
                     f"(batch {record.batch_size})")
    return "\n".join(lines)


def run(argv: Sequence[str] | None = None) -> int:
    p = OneLineParser(prog="python -m nas.costs", description="Costs of an architecture.")
    p.add_argument("arch", help="named point, spec JSON file, or JSON text")
    p.add_argument("--image-size", type=int, default=None,
                   help="input side (default: 224, small: 32)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="where latency and memory are measured")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH,
                   help="batch of the throughput and peak-memory measurements")
    p.add_argument("--no-latency", action="store_true", help="static costs only (no timing)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    record = measure_costs(args.arch, args.image_size, args.device, args.batch_size,
                           latency=not args.no_latency)
    print(json.dumps(record.to_dict(), sort_keys=True) if args.json else _format(record))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
