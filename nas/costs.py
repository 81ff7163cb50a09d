"""`python -m nas.costs ARCH`: parameters, MACs, peak memory and latency of one architecture.

Definitions of each figure are in `nas.models.costs`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import torch

from nas.models.costs import DEFAULT_BATCH, CostRecord, measure_costs
from nas.models.latency import BACKENDS, PRECISIONS, LatencySettings, check_backend_available
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
        how = LatencySettings.from_dict(record.latency or {})
        lines.append(f"latency             {record.latency_ms:.3f} ms per forward "
                     f"({how.describe()})")
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
    p.add_argument("--latency-backend", default="torch",
                   help=f"how latency is measured: {', '.join(BACKENDS)}")
    p.add_argument("--latency-batch-size", type=int, default=1,
                   help="images per timed forward of the latency")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads of the latency (default: torch's, "
                        f"{torch.get_num_threads()} here)")
    p.add_argument("--precision", default="fp32",
                   help=f"precision of the latency: {', '.join(PRECISIONS)}")
    p.add_argument("--runs", type=int, default=10, help="timed forwards (the median is shown)")
    p.add_argument("--warmup", type=int, default=3, help="untimed forwards before them")
    p.add_argument("--no-latency", action="store_true", help="static costs only (no timing)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    settings = LatencySettings(
        backend=args.latency_backend, batch_size=args.latency_batch_size,
        threads=args.threads if args.threads is not None else torch.get_num_threads(),
        precision=args.precision, device=args.device, warmup=args.warmup, runs=args.runs)
    if not args.no_latency:
        check_backend_available(settings)  # a missing extra is named before any work
    record = measure_costs(args.arch, args.image_size, args.device, args.batch_size,
                           latency=not args.no_latency, warmup=args.warmup, runs=args.runs,
                           latency_settings=settings)
    print(json.dumps(record.to_dict(), sort_keys=True) if args.json else _format(record))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
