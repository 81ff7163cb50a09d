"""Training-step throughput of our builder vs timm, interleaved A/B in one process.

One step = forward + cross-entropy + backward + SGD(momentum) step on a fixed random batch. Both
models hold the same weights (ours loads timm's state dict, checked equal in eval first), run in
the same memory format and autocast setting, and alternate every round (ABBA order) so drift in
machine load hits both alike. Reports medians over rounds and the ratio ours/timm in images/s.

    python bench/bench_vs_timm.py --batch-size 8 --image-size 224 --rounds 6
    python bench/bench_vs_timm.py --device cuda --amp --channels-last   # GPU: bf16 autocast
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nas import build_model  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _make_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, amp: bool):
    """A closure running one training step; autocast only around forward + loss (as in training)."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    dtype = torch.bfloat16

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=dtype, enabled=amp):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    return step


def _pair(name: str, device: torch.device, channels_last: bool) -> dict[str, torch.nn.Module]:
    import timm  # the benchmark's reference only; nas/ never imports timm

    torch.manual_seed(0)
    theirs = timm.create_model(name, pretrained=False)
    ours = build_model(name)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    models = {"ours": ours, "timm": theirs}
    probe = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        diff = (ours.eval()(probe) - theirs.eval()(probe)).abs().max().item()
    if diff > 1e-4:
        raise SystemExit(f"{name}: our output differs from timm's by {diff:.2e}; not benchmarking")
    for m in models.values():
        m.to(device=device, memory_format=fmt).train()
    return models


def bench_model(name: str, args: argparse.Namespace) -> dict[str, float]:
    device = torch.device(args.device)
    models = _pair(name, device, args.channels_last)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=gen)
    y = torch.randint(0, 1000, (args.batch_size,), generator=gen).to(device)
    x = x.to(device, memory_format=torch.channels_last if args.channels_last else torch.contiguous_format)
    steps = {k: _make_step(m, x, y, args.amp) for k, m in models.items()}
    for fn in steps.values():
        for _ in range(args.warmup):
            fn()
    _sync(device)
    times: dict[str, list[float]] = {k: [] for k in steps}
    cpu: dict[str, list[float]] = {k: [] for k in steps}
    for r in range(args.rounds):
        order = ["ours", "timm"] if r % 2 == 0 else ["timm", "ours"]
        for key in order:
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(args.steps_per_round):
                steps[key]()
            _sync(device)
            times[key].append((time.perf_counter() - t0) / args.steps_per_round)
            cpu[key].append((time.process_time() - c0) / args.steps_per_round)
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    ours_ips, timm_ips = args.batch_size / med["ours"], args.batch_size / med["timm"]
    # Per-round ratios (paired by round) show the spread that one median hides.
    paired = sorted(t / o for o, t in zip(times["ours"], times["timm"], strict=True))
    return {
        "ours_s": med["ours"], "timm_s": med["timm"], "ours_ips": ours_ips, "timm_ips": timm_ips,
        "ratio": ours_ips / timm_ips, "ratio_min": paired[0], "ratio_max": paired[-1],
        # CPU seconds of this process per step: on a shared machine, time spent descheduled
        # does not count, so this ratio is steadier than the wall-clock one (CPU device only).
        "cpu_ratio": med_cpu["timm"] / med_cpu["ours"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["resnest50d", "resnest50d_4s2x40d"])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=6, help="A/B rounds (medians over rounds)")
    p.add_argument("--steps-per-round", type=int, default=1)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per model")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--amp", action="store_true", help="bf16 autocast around forward + loss")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--output", type=Path, help="also write the markdown table here")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
    lines = [
        f"- date: {datetime.date.today().isoformat()}, torch {torch.__version__}, "
        f"python {platform.python_version()}, device {args.device}, "
        f"threads {torch.get_num_threads()}",
        f"- batch {args.batch_size}, {args.image_size} px, {args.rounds} rounds x "
        f"{args.steps_per_round} steps, warm-up {args.warmup}, channels_last "
        f"{args.channels_last}, amp(bf16) {args.amp}",
        "",
        "| model | ours s/step | timm s/step | ours img/s | timm img/s | ratio ours/timm "
        "| per-round ratio min-max | CPU-time ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in args.models:
        r = bench_model(name, args)
        lines.append(
            f"| {name} | {r['ours_s']:.3f} | {r['timm_s']:.3f} | {r['ours_ips']:.2f} | "
            f"{r['timm_ips']:.2f} | {r['ratio']:.3f} | {r['ratio_min']:.3f}-{r['ratio_max']:.3f} | "
            + (f"{r['cpu_ratio']:.3f} |" if args.device == "cpu" else "n/a |")
        )
        print(lines[-1], flush=True)
    table = "\n".join(lines)
    print("\n" + table)
    if args.output:
        args.output.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
