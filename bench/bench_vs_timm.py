"""Training-step throughput of our builder vs timm, interleaved A/B in one process.

Is a network built by `nas.build_model` as fast to train as timm's implementation of the same
architecture? One step = forward + cross-entropy + backward + SGD(momentum) step on a fixed
random batch. Both models hold the same weights (ours loads timm's state dict, checked equal in
eval first), run in the same memory format and autocast setting, and alternate every round
(ABBA order) so drift in machine load hits both alike. Reports medians over rounds and the
ratio ours/timm in images/s (> 1: ours is faster).

`--unit split-attention` times only the split-attention modules (forward + backward, every
distinct shape the model runs, weighted by how often it occurs): the one part whose code differs
from timm's, with far less noise than whole steps on a shared machine.

    python -m bench.bench_vs_timm --models resnest50d_4s2x40d resnest50d --repeats 4 --rounds 8
    python -m bench.bench_vs_timm --unit split-attention --threads 1 --rounds 15
    python -m bench.bench_vs_timm --aa --models resnest50d   # A/A: the harness's own bias
    python -m bench.bench_vs_timm --device cuda --amp --channels-last   # GPU: bf16 autocast
    python -m bench.bench_vs_timm --device cuda --amp --formats  # ours: channels_last vs NCHW

timm is the reference only (nas/ never imports it): install it with the `test` extra.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import platform
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from nas.models.builder import build_model
from nas.models.split_attention import SplitAttention


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


Timings = dict[str, list[float]]


def ab_time(fns: dict[str, Callable[[], None]], rounds: int, reps: int,
            device: torch.device) -> tuple[Timings, Timings]:
    """Alternate the two entries of `fns` each round (ABBA); wall and process CPU seconds per
    call, per round."""
    wall: Timings = {k: [] for k in fns}
    cpu: Timings = {k: [] for k in fns}
    a, b = fns
    for r in range(rounds):
        for key in ([a, b] if r % 2 == 0 else [b, a]):
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(reps):
                fns[key]()
            _sync(device)
            wall[key].append((time.perf_counter() - t0) / reps)
            cpu[key].append((time.process_time() - c0) / reps)
    return wall, cpu


def summarize(wall: Timings, cpu: Timings) -> dict[str, float]:
    """Statistics of an ours/timm pair (`--formats`: channels_last in the ours slot, NCHW in
    timm's)."""
    paired = sorted(t / o for o, t in zip(wall["ours"], wall["timm"], strict=True))
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    return {
        "ours_s": med["ours"], "timm_s": med["timm"], "ratio": med["timm"] / med["ours"],
        # Per-round ratios (paired by round) show the spread that one median hides.
        "ratio_paired": statistics.median(paired), "ratio_min": paired[0], "ratio_max": paired[-1],
        # Process CPU seconds: time spent descheduled on a shared machine does not count, so
        # this ratio is steadier than the wall-clock one (meaningful on the CPU device only).
        "cpu_ratio": med_cpu["timm"] / med_cpu["ours"],
        "ours_cpu_s": med_cpu["ours"], "timm_cpu_s": med_cpu["timm"],
    }


def _pair(name: str, device: torch.device, channels_last: bool, ours_first: bool = False,
          same: bool = False) -> dict[str, torch.nn.Module]:
    """Both models with timm's weights. `same`: the "ours" slot holds a second timm model (an A/A
    run: measures the harness's own bias, e.g. from where each model's memory landed)."""
    import timm  # lazy: the reference is an optional (test-extra) package, used only here

    def make_ours() -> torch.nn.Module:
        return timm.create_model(name, pretrained=False) if same else build_model(name)

    torch.manual_seed(0)
    if ours_first:  # alternate construction order between repeats: allocation order matters
        ours, theirs = make_ours(), timm.create_model(name, pretrained=False)
    else:
        theirs, ours = timm.create_model(name, pretrained=False), make_ours()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    probe = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        diff = (ours.eval()(probe) - theirs.eval()(probe)).abs().max().item()
    if diff > 1e-4:
        raise SystemExit(f"{name}: our output differs from timm's by {diff:.2e}; not benchmarking")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return {k: m.to(device=device, memory_format=fmt).train() for k, m in
            (("ours", ours), ("timm", theirs))}


def _input(args: argparse.Namespace, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    fmt = torch.channels_last if args.channels_last and len(shape) == 4 else torch.contiguous_format
    return x.to(device, memory_format=fmt)


def bench_model(name: str, args: argparse.Namespace) -> dict[str, float]:
    """`args.repeats` fresh model pairs (construction order alternating), `args.rounds` ABBA
    rounds each; statistics over all rounds."""
    device = torch.device(args.device)
    x = _input(args, (args.batch_size, 3, args.image_size, args.image_size), device)
    y = torch.randint(0, 1000, (args.batch_size,), generator=torch.Generator().manual_seed(2))
    y = y.to(device)

    def make_step(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()

        return step

    wall: Timings = {"ours": [], "timm": []}
    cpu: Timings = {"ours": [], "timm": []}
    for repeat in range(args.repeats):
        if args.formats:  # our model twice, same weights: channels_last ("ours") vs NCHW ("timm")
            torch.manual_seed(0)
            base = build_model(name)
            formats = (("ours", torch.channels_last), ("timm", torch.contiguous_format))
            models = {k: copy.deepcopy(base).to(device=device, memory_format=fmt).train()
                      for k, fmt in formats}
            inputs = {"ours": x.contiguous(memory_format=torch.channels_last),
                      "timm": x.contiguous()}
        else:
            models = _pair(name, device, args.channels_last, ours_first=repeat % 2 == 1,
                           same=args.aa)
            inputs = {"ours": x, "timm": x}
        steps = {k: make_step(m, inputs[k]) for k, m in models.items()}
        for fn in steps.values():
            for _ in range(args.warmup):
                fn()
        w, c = ab_time(steps, args.rounds, args.steps_per_round, device)
        for k in wall:
            wall[k] += w[k]
            cpu[k] += c[k]
        del models, steps
    result = summarize(wall, cpu)
    result["ours_ips"] = args.batch_size / result["ours_s"]
    result["timm_ips"] = args.batch_size / result["timm_s"]
    return result


def bench_split_attention(name: str, args: argparse.Namespace) -> dict[str, float]:
    """Sum over the model's split-attention calls of forward + backward time, ours vs timm's
    `SplitAttn` holding the same weights (each distinct input shape timed once, weighted)."""
    from timm.layers.split_attn import SplitAttn  # lazy: optional reference package

    device = torch.device(args.device)
    model = build_model(name)
    calls: Counter = Counter()
    hooks = [m.register_forward_hook(
        lambda mod, inp, _out: calls.update([(mod, tuple(inp[0].shape))]))
        for m in model.modules() if isinstance(m, SplitAttention)]
    with torch.no_grad():
        model(torch.randn(2, 3, args.image_size, args.image_size))
    for h in hooks:
        h.remove()
    distinct: dict[tuple, int] = Counter()
    for (mod, shape), n in calls.items():
        key = (mod.channels, mod.fc1.out_channels, mod.radix, mod.cardinality,
               mod.conv.stride[0], shape[1:])
        distinct[key] += n
    totals = {"ours_s": 0.0, "timm_s": 0.0, "cpu_ours": 0.0, "cpu_timm": 0.0}
    for (ch, attn, radix, card, stride, shape), count in distinct.items():
        ours = SplitAttention(ch, attn, radix, card, stride)
        theirs = SplitAttn(ch, ch, 3, stride, groups=card, radix=radix,
                           norm_layer=torch.nn.BatchNorm2d)
        theirs.load_state_dict(ours.state_dict())
        fmt = torch.channels_last if args.channels_last else torch.contiguous_format
        x = _input(args, (args.batch_size, *shape), device).requires_grad_()
        fns = {}
        for key, mod in (("ours", ours), ("timm", theirs)):
            mod = mod.to(device, memory_format=fmt).train()

            def fwd_bwd(mod: torch.nn.Module = mod, x: torch.Tensor = x) -> None:
                x.grad = None
                mod.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
                    out = mod(x)
                out.float().square().mean().backward()

            fns[key] = fwd_bwd
            for _ in range(args.warmup):
                fwd_bwd()
        r = summarize(*ab_time(fns, args.rounds, args.steps_per_round, device))
        totals["ours_s"] += count * r["ours_s"]
        totals["timm_s"] += count * r["timm_s"]
        totals["cpu_ours"] += count * r["ours_cpu_s"]
        totals["cpu_timm"] += count * r["timm_cpu_s"]
    totals["ratio"] = totals["timm_s"] / totals["ours_s"]
    totals["cpu_ratio"] = totals["cpu_timm"] / totals["cpu_ours"]
    return totals


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["resnest50d", "resnest50d_4s2x40d"])
    p.add_argument("--unit", choices=["model", "split-attention"], default="model")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=6, help="A/B rounds (medians over rounds)")
    p.add_argument("--steps-per-round", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1,
                   help="fresh model pairs (construction order alternates); rounds pool")
    p.add_argument("--aa", action="store_true",
                   help="A/A calibration: a second timm model in our slot (expect ratio 1)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per model")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--formats", action="store_true",
                   help="A/B our model in channels_last (ours columns) against NCHW (timm columns)")
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
        f"threads {torch.get_num_threads()}, unit {args.unit}"
        + (", A/A calibration (timm vs timm)" if args.aa else "")
        + (", FORMATS: ours columns = our model channels_last, timm columns = our model NCHW"
           if args.formats else ""),
        f"- batch {args.batch_size}, {args.image_size} px, {args.repeats} x {args.rounds} rounds x "
        f"{args.steps_per_round} steps, warm-up {args.warmup}, channels_last "
        f"{args.channels_last}, amp(bf16) {args.amp}",
        "",
    ]
    cpu_col = args.device == "cpu"
    if args.unit == "model":
        lines += ["| model | ours s/step | timm s/step | ours img/s | timm img/s | ratio ours/timm "
                  "| per-round ratio median (min-max) | CPU-time ratio |",
                  "|---|---|---|---|---|---|---|---|"]
    else:
        lines += ["| model | ours split-attention s/step | timm s/step | ratio ours/timm "
                  "| CPU-time ratio |", "|---|---|---|---|---|"]
    for name in args.models:
        if args.unit == "model":
            r = bench_model(name, args)
            lines.append(
                f"| {name} | {r['ours_s']:.3f} | {r['timm_s']:.3f} | {r['ours_ips']:.2f} | "
                f"{r['timm_ips']:.2f} | {r['ratio']:.3f} | {r['ratio_paired']:.3f} "
                f"({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) | "
                + (f"{r['cpu_ratio']:.3f} |" if cpu_col else "n/a |"))
        else:
            r = bench_split_attention(name, args)
            lines.append(f"| {name} | {r['ours_s']:.4f} | {r['timm_s']:.4f} | {r['ratio']:.3f} | "
                         + (f"{r['cpu_ratio']:.3f} |" if cpu_col else "n/a |"))
        print(lines[-1], flush=True)
    table = "\n".join(lines)
    print("\n" + table)
    if args.output:
        args.output.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
