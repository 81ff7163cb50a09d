"""Issue 22's evidence: latency tables' prediction error, latency against MACs, the paper's fast
variants, and how much concurrent training inflates a trial's latency measurement.

Each step writes under docs/raw/latency/ and is resumable (`macs` appends one JSON line per
network and skips those done). Timed runs only (never building, exporting or compiling) run with
the other benchmarks on this machine paused (SIGSTOP/SIGCONT of the processes `--pause` matches;
always resumed on exit), so the figures are of an otherwise idle machine.

    python -m bench.latency_evidence tables     # nas.latency profile, small preset @16 px
    python -m bench.latency_evidence macs       # 200 samples per preset and backend
    python -m bench.latency_evidence fast       # the seven resnest50_fast_* at 224 px
    python -m bench.latency_evidence inflation  # idle vs beside training, with and without gate
    python -m bench.latency_evidence repeat     # repeatability of networks and part sums
    python -m bench.latency_evidence fronts     # the two Fashion-MNIST searches' fronts
    python -m bench.latency_evidence report     # summary.json and docs/latency_vs_macs.png
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nas.latency.parts import parts_of
from nas.latency.profile import machine, profile, sample_networks
from nas.latency.table import load_table, mape, spearman
from nas.models.latency import LatencyBackend, LatencySettings
from search_spaces import ArchSpec, counts, get_space, named_point
from search_spaces.files import atomic_write_text
from trials.latency_step import TrainingGate, measurement_lock
from trials.trial import Trial
from trials.trial_config import build_trial_config

RAW = Path("docs/raw/latency")
PAUSE = r"bench\.(resnest_bench|search_efficiency)"
# (preset, image size, samples, warm-up, runs) of the latency-against-MACs step.
MACS_SETS = {"small": (16, 200, 5, 20), "imagenet": (64, 200, 1, 3)}
FAST = ["resnest50_fast_1s1x64d", "resnest50_fast_2s1x64d", "resnest50_fast_4s1x64d",
        "resnest50_fast_1s2x40d", "resnest50_fast_2s2x40d", "resnest50_fast_4s2x40d",
        "resnest50_fast_1s4x24d"]
# The authors' ablation table (github.com/zhanghang1989/ResNeSt, ablation.md): params (M),
# GFLOPs (= MACs), ImageNet top-1 % of their PyTorch and Gluon weights.
PAPER = {"resnest50_fast_1s1x64d": (26.3, 4.34, 80.33, 80.35),
         "resnest50_fast_2s1x64d": (27.5, 4.34, 80.53, 80.65),
         "resnest50_fast_4s1x64d": (31.9, 4.35, 80.76, 80.90),
         "resnest50_fast_1s2x40d": (25.9, 4.38, 80.59, 80.72),
         "resnest50_fast_2s2x40d": (26.9, 4.38, 80.97, 81.00),
         "resnest50_fast_4s2x40d": (30.4, 4.41, 80.86, 80.92),
         "resnest50_fast_1s4x24d": (25.7, 4.42, 80.99, 80.97)}


class Pauser:
    """Stops the processes matching `pattern` around timed runs; resumes them on exit."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.stopped: list[int] = []
        self.paused_s = 0.0
        atexit.register(self.resume_all)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._exit)

    def _exit(self, signum: int, frame: Any) -> None:
        self.resume_all()
        raise SystemExit(128 + signum)

    def pids(self) -> list[int]:
        if not self.pattern:
            return []
        out = subprocess.run(["pgrep", "-f", self.pattern], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split() if int(p) != os.getpid()]

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        self.stopped = self.pids()
        for pid in self.stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        started = time.monotonic()
        try:
            yield
        finally:
            self.paused_s += time.monotonic() - started
            for pid in self.stopped:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            self.stopped = []

    def resume_all(self) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def state(pauser: Pauser) -> dict[str, Any]:
    """The machine when measured: load, what was paused, this machine."""
    return {"loadavg": os.getloadavg(), "paused_pattern": pauser.pattern,
            "paused_processes": len(pauser.pids()), "machine": machine(),
            "when": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def backend(name: str, pauser: Pauser, warmup: int = 5, runs: int = 20) -> LatencyBackend:
    return LatencyBackend(LatencySettings(backend=name, warmup=warmup, runs=runs), quiet=pauser)


def step_tables(args: argparse.Namespace, pauser: Pauser) -> None:
    """nas.latency profile of the small preset at 16 px per backend: complete tables, constant
    fitted on 10 networks, error on 50 held out."""
    space = get_space("resnest", "small")
    suffix = f"-sampled-p{args.passes}" if args.only_sampled else ""
    suffix += f"-{args.fit}+{args.validate}" if (args.fit, args.validate) != (10, 50) else ""
    for name in args.backends:
        out = RAW / f"table-small-16-{name}{suffix}.json"
        if out.exists():
            print(f"{out} exists: skipped")
            continue
        started = time.monotonic()
        table = profile(space, "resnest", 16, 10, 1, backend(name, pauser), fit=args.fit,
                        validate=args.validate, seed=0, only_sampled=args.only_sampled,
                        passes=args.passes)
        atomic_write_text(out, table.to_json())
        v = table.validation
        record = {"backend": name, "parts": len(table.parts), "complete": table.complete,
                  "passes": args.passes,
                  "constant_ms": table.constant_ms, "mape_percent": v["mape_percent"],
                  "spearman": v["spearman"], "validated": len(v["networks"]),
                  "seconds": time.monotonic() - started, "paused_s": pauser.paused_s,
                  "state": state(pauser), "definition": table.settings.describe()}
        _append(RAW / "tables.jsonl", record)
        print(json.dumps({k: record[k] for k in ("backend", "parts", "mape_percent",
                                                 "spearman", "seconds", "paused_s")}))


def step_macs(args: argparse.Namespace, pauser: Pauser) -> None:
    """Latency of 200 sampled networks per preset and backend beside their MACs."""
    path = RAW / "latency_vs_macs.jsonl"
    done = {(r["preset"], r["backend"], r["index"]) for r in _read(path)}
    for preset in args.presets:
        size, count, warmup, runs = MACS_SETS[preset]
        space = get_space("resnest", preset)
        specs = sample_networks(space, count, 1, space.preset.num_classes,
                                space.preset.in_channels, size)
        for name in args.backends:
            timer = backend(name, pauser, warmup, runs)
            for index, spec in enumerate(specs[:args.limit or count]):
                if (preset, name, index) in done:
                    continue
                ms = timer.measure_spec(spec, size)
                _append(path, {"preset": preset, "backend": name, "index": index,
                               "image_size": size, "tag": spec.tag, "macs": counts.macs(spec, size),
                               "params": counts.params(spec), "latency_ms": ms,
                               "definition": timer.settings.describe(),
                               "loadavg": os.getloadavg()})
            print(f"{preset} {name}: done, paused {pauser.paused_s:.0f} s so far", flush=True)


def step_fast(args: argparse.Namespace, pauser: Pauser) -> None:
    """The paper's seven ResNeSt-50-fast variants at 224 px, batch 1, one thread."""
    rows = []
    for name in args.backends:
        timer = backend(name, pauser, 1, 5)
        for point in FAST:
            spec = named_point(point)
            rows.append({"name": point, "backend": name, "latency_ms":
                         timer.measure_spec(spec, 224), "macs": counts.macs(spec, 224),
                         "params": counts.params(spec), "paper": PAPER[point],
                         "definition": timer.settings.describe()})
            print(json.dumps(rows[-1]), flush=True)
    atomic_write_text(RAW / "fast_variants.json", json.dumps(
        {"rows": rows, "state": state(pauser)}, indent=1) + "\n")


def step_inflation(args: argparse.Namespace, pauser: Pauser) -> None:
    """Latency of 20 small networks (torch, 1 thread, each under the search's measurement lock)
    on the idle machine, beside one training process (normal priority, one thread: what a
    trial's measurement meets at the default concurrency of a 2-core machine) that ignores the
    lock, and beside one that trains as a latency-measuring search's trial does (its steps pass
    the node's gate: `trials.latency_step.TrainingGate`)."""
    space = get_space("resnest", "small")
    specs = sample_networks(space, 20, 2, 10, 1, 16)
    timer = backend("torch", Pauser(""), 5, 20)
    lock = "/tmp/latency-evidence.lock"

    def measure_all() -> list[float]:
        out = []
        for spec in specs:
            with measurement_lock(lock):
                out.append(timer.measure_spec(spec, 16))
        return out

    rows: dict[str, list[float]] = {}
    with pauser():  # the other benchmarks stay paused for the whole step
        rows["idle"] = measure_all()
        for mode in ("plain", "gated"):
            train = subprocess.Popen(
                [sys.executable, "-m", "bench.latency_evidence", "_train", "--mode", mode,
                 "--lock", lock], env={**os.environ, "OMP_NUM_THREADS": "1"},
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                time.sleep(15)  # past its start-up, into training
                rows[mode] = measure_all()
            finally:
                train.terminate()
                train.wait()
    record: dict[str, Any] = {f"{k}_ms": v for k, v in rows.items()}
    for mode in ("plain", "gated"):
        ratio = np.array(rows[mode]) / np.array(rows["idle"])
        record[mode] = {"median_ratio": float(np.median(ratio)), "min_ratio": float(ratio.min()),
                        "max_ratio": float(ratio.max()),
                        "spearman_vs_idle": spearman(rows["idle"], rows[mode])}
    record.update(definition=timer.settings.describe(), state=state(pauser))
    atomic_write_text(RAW / "inflation.json", json.dumps(record, indent=1) + "\n")
    print(json.dumps({m: record[m] for m in ("plain", "gated")}))


def step_train(args: argparse.Namespace, pauser: Pauser) -> None:
    """(internal) Train a small network for minutes, through the gate or not."""
    torch.set_num_threads(1)
    config = build_trial_config({"spec": "resnest:7", "data": "digits", "image_size": 16,
                                 "epochs": 1000, "batch_size": 32})
    trial = Trial(config, threads=1)
    if args.mode == "gated":
        trial.trainer.on_step = TrainingGate(args.lock).between_steps
    for _ in trial.run():
        pass


def step_fronts(args: argparse.Namespace, pauser: Pauser) -> None:
    """The fronts of the two Fashion-MNIST searches (accuracy,latency from the torch table, and
    accuracy,macs): each member's radix and cardinality per stage, and every member's latency
    predicted by the same table, so the two fronts are compared on one scale."""
    import analysis

    table = load_table(RAW / "table-small-16-torch.json")
    out: dict[str, Any] = {}
    for name, objectives in (("latency", "accuracy,latency"), ("macs", "accuracy,macs")):
        exp = Path(args.experiments) / f"fmnist-{name}"
        df = analysis.load(exp)
        front = analysis.sort_along_front(analysis.pareto_front(df, objectives), objectives)
        members = []
        for _, row in front.iterrows():
            spec = ArchSpec.from_json(row["spec"])
            members.append({"trial": row["trial_id"], "tag": spec.tag,
                            "radix": [st.radix for st in spec.stages],
                            "cardinality": [st.cardinality for st in spec.stages],
                            "accuracy": float(row["accuracy"]), "macs": int(row["macs"]),
                            "predicted_latency_ms": table.predict(spec)})
        done = df[df["state"] == "COMPLETE"]
        out[name] = {"objectives": objectives, "trials": len(df), "complete": len(done),
                     "front": members}
        print(f"{objectives}: {len(members)} on the front of {len(done)} complete")
        for m in members:
            print(f"  {m['trial']} {m['tag']:<45} acc {m['accuracy']:.3f} "
                  f"{m['macs'] / 1e6:7.2f} MMACs {m['predicted_latency_ms']:6.2f} ms "
                  f"radix {m['radix']} card {m['cardinality']}")
    atomic_write_text(RAW / "fronts.json", json.dumps(out, indent=1) + "\n")


def step_repeat(args: argparse.Namespace, pauser: Pauser) -> None:
    """Repeatability: 10 held-out networks of a table and their parts measured again in three
    interleaved passes; how much a network's figure and its parts' sum move between passes."""
    for name in args.backends:
        table = load_table(RAW / f"table-small-16-{name}.json")
        timer = backend(name, pauser, table.settings.warmup, table.settings.runs)
        specs = [ArchSpec.from_json(r["spec"]) for r in table.validation["networks"][:10]]
        passes: list[dict[str, list[float]]] = []
        for _ in range(3):
            whole = [timer.measure_spec(s, 16) for s in specs]
            sums = [sum(timer.measure(p.build(), p.input_shape) - table.overhead_ms
                        for p in parts_of(s, 16)) for s in specs]
            passes.append({"measured_ms": whole, "parts_ms": sums})
        measured = np.array([p["measured_ms"] for p in passes])
        sums = np.array([p["parts_ms"] for p in passes])
        record = {"backend": name, "passes": passes, "tags": [s.tag for s in specs],
                  "table_measured_ms": [r["measured_ms"] for r in
                                        table.validation["networks"][:10]],
                  "measured_spread_percent": float(np.median(
                      100 * (measured.max(0) - measured.min(0)) / measured.mean(0))),
                  "parts_spread_percent": float(np.median(
                      100 * (sums.max(0) - sums.min(0)) / sums.mean(0))),
                  "mape_each_pass": [mape(m, s + table.constant_ms) for m, s in
                                     zip(measured, sums, strict=True)],
                  "mape_mean_of_passes": mape(measured.mean(0), sums.mean(0)
                                              + table.constant_ms),
                  "state": state(pauser)}
        _append(RAW / "repeat.jsonl", record)
        print(json.dumps({k: v for k, v in record.items() if "spread" in k or "mape" in k}))


def step_report(args: argparse.Namespace, pauser: Pauser) -> None:
    """Rank correlations of latency and MACs per preset and backend, the plot, summary.json."""
    rows = _read(RAW / "latency_vs_macs.jsonl")
    summary: dict[str, Any] = {"latency_vs_macs": [], "tables": _read(RAW / "tables.jsonl")}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["preset"], r["backend"]), []).append(r)
    for (preset, name), group in sorted(groups.items()):
        lat = [r["latency_ms"] for r in group]
        summary["latency_vs_macs"].append({
            "preset": preset, "backend": name, "networks": len(group),
            "image_size": group[0]["image_size"], "definition": group[0]["definition"],
            "spearman_latency_macs": spearman(lat, [r["macs"] for r in group]),
            "spearman_latency_params": spearman(lat, [r["params"] for r in group])})
    fast = RAW / "fast_variants.json"
    if fast.exists():
        summary["fast_variants"] = json.loads(fast.read_text())["rows"]
    inflation = RAW / "inflation.json"
    if inflation.exists():
        data = json.loads(inflation.read_text())
        summary["inflation"] = {m: data[m] for m in ("plain", "gated")}
    for t in summary["tables"]:
        t.pop("state", None)
    atomic_write_text(RAW / "summary.json", json.dumps(summary, indent=1) + "\n")
    _plot(groups, Path("docs/latency_vs_macs.png"))
    print(json.dumps(summary["latency_vs_macs"], indent=1))


def _plot(groups: dict[tuple[str, str], list[dict[str, Any]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    presets = sorted({p for p, _ in groups})
    fig, axes = plt.subplots(1, len(presets), figsize=(6 * len(presets), 4.5), squeeze=False)
    for ax, preset in zip(axes[0], presets, strict=True):
        for (p, name), group in sorted(groups.items()):
            if p != preset:
                continue
            macs = [r["macs"] / 1e6 for r in group]
            lat = [r["latency_ms"] for r in group]
            rho = spearman(lat, macs)
            ax.scatter(macs, lat, s=10, alpha=0.6,
                       label=f"{name}: {len(group)} networks, Spearman {rho:.2f}")
        size = groups[next(k for k in groups if k[0] == preset)][0]["image_size"]
        ax.set(xscale="log", yscale="log", xlabel=f"MMACs per image at {size} px",
               ylabel="latency, ms per forward (batch 1, 1 thread)",
               title=f"preset {preset}: latency against MACs")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def _append(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")


def _read(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


STEPS = {"tables": step_tables, "macs": step_macs, "fast": step_fast,
         "inflation": step_inflation, "repeat": step_repeat, "fronts": step_fronts,
         "report": step_report, "_train": step_train}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.latency_evidence")
    p.add_argument("step", choices=list(STEPS))
    p.add_argument("--backends", nargs="+", default=["torch", "onnxruntime"])
    p.add_argument("--presets", nargs="+", default=["small", "imagenet"])
    p.add_argument("--limit", type=int, default=0, help="networks per set (0: all)")
    p.add_argument("--only-sampled", action="store_true", help="tables: sampled parts only")
    p.add_argument("--passes", type=int, default=1, help="tables: passes of the profile")
    p.add_argument("--fit", type=int, default=10, help="tables: networks fitting the constant")
    p.add_argument("--validate", type=int, default=50, help="tables: held-out networks")
    p.add_argument("--experiments", default="runs/latency-evidence",
                   help="fronts: where the two searches' experiments are")
    p.add_argument("--pause", default=PAUSE, help="processes to pause around timed runs")
    p.add_argument("--mode", default="plain", help=argparse.SUPPRESS)
    p.add_argument("--lock", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    pauser = Pauser(args.pause if args.step != "_train" else "")
    try:
        STEPS[args.step](args, pauser)
    finally:
        pauser.resume_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
