"""Correctness of the GPU code paths, for a machine with CUDA (the test suite runs on CPU only).

Checks, each printed as one PASS/FAIL line with its numbers:
1. every registered space's seeded sample and every named point: fp32 logits on CUDA (TF32 off,
   NCHW and channels_last) equal the CPU logits, and bf16 autocast + channels_last stays close;
2. the generated standalone module (`nas.export.codegen`), loaded with the same weights, gives the same
   logits on CUDA as the builder;
3. a trial on CUDA (bf16 autocast, channels_last: the CUDA defaults) learns digits, and its
   checkpoint, saved from the GPU, resumes on the CPU;
4. `measure_costs(device="cuda")` times latency and peak memory on the GPU.

    python bench/gpu_checks.py
    python bench/gpu_checks.py --device cpu   # dry run of the script itself (CPU against CPU)
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nas import build_model, measure_costs  # noqa: E402
from nas.export.codegen import generate_source  # noqa: E402
from nas.export.verify import import_file  # noqa: E402
from search_spaces import get_space, list_named_points, list_spaces, named_point  # noqa: E402
from trials.trial import Trial  # noqa: E402

FP32_TOL = 1e-3  # relative to the logits' scale
BF16_TOL = 0.1
failures: list[str] = []


def check(name: str, ok: bool, detail: str) -> None:
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)
    if not ok:
        failures.append(name)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float().cpu() - b.float().cpu()).abs().max() / b.abs().max().clamp_min(1e-6)).item()


def specs() -> dict[str, object]:
    out: dict[str, object] = {f"{s}:0": get_space(s).sample(np.random.default_rng(0)) for s in list_spaces()}
    out.update({p: named_point(p) for p in list_named_points()})
    return out


def check_models(device: torch.device) -> None:
    for name, spec in specs().items():
        size = 32 if spec.min_image_size <= 32 else spec.min_image_size
        torch.manual_seed(0)
        model = build_model(spec).eval()
        x = torch.randn(4, spec.in_channels, size, size, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            ref = model(x)
            gpu = model.to(device)
            nchw = rel_err(gpu(x.to(device)), ref)
            gpu = gpu.to(memory_format=torch.channels_last)
            xcl = x.to(device).contiguous(memory_format=torch.channels_last)
            cl = rel_err(gpu(xcl), ref)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                bf16 = rel_err(gpu(xcl), ref)
        check(f"logits {name} ({size} px)", nchw < FP32_TOL and cl < FP32_TOL and bf16 < BF16_TOL,
              f"fp32 NCHW {nchw:.1e}, fp32 channels_last {cl:.1e} (tol {FP32_TOL:g}); "
              f"bf16 channels_last {bf16:.1e} (tol {BF16_TOL:g})")


def check_export(device: torch.device) -> None:
    spec = get_space(list_spaces()[0]).sample(np.random.default_rng(3))
    torch.manual_seed(0)
    model = build_model(spec).eval().to(device)
    source = generate_source(spec, weights_file="w.safetensors",
                             preprocessing={"image_size": 32, "mean": [0.5] * spec.in_channels,
                                            "std": [0.25] * spec.in_channels})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "exported.py"
        path.write_text(source)
        module = import_file(path)
    exported = module.build(num_classes=spec.num_classes).eval().to(device)
    exported.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(4, spec.in_channels, 32, 32, device=device)
    with torch.no_grad():
        err = rel_err(exported(x), model(x))
    check(f"standalone module {spec.tag}", err < FP32_TOL, f"relative difference {err:.1e} on {device.type}")


def check_trial(device: torch.device) -> None:
    config = {"spec": "resnest:0", "device": device.type, "epochs": 4, "image_size": 16}
    trial = Trial(config)
    curve = list(itertools.islice(trial.run(), 3))  # epoch 4 runs on the CPU, from the checkpoint
    top1 = curve[-1]["val_top1"]
    cuda = device.type == "cuda"
    check("trial learns digits", top1 > 0.5 and trial.trainer.amp == cuda and trial.trainer.channels_last == cuda,
          f"val top-1 {top1:.3f} after 3 epochs (bf16 {trial.trainer.amp}, channels_last "
          f"{trial.trainer.channels_last}), images/s {[round(r['images_per_s']) for r in curve]}")
    resumed = Trial({**config, "device": "cpu"}, checkpoint=trial.state_dict())
    before = resumed.trainer.epoch
    record = next(resumed.run())
    check("GPU checkpoint resumes on CPU", before == 3 and record["epoch"] == 4 and record["val_top1"] > 0.5,
          f"resumed at epoch {before}, epoch 4 val top-1 {record['val_top1']:.3f}")


def check_costs(device: torch.device) -> None:
    record = measure_costs("resnest14d", image_size=64, device=device.type)
    ok = record.latency_ms > 0 and record.peak_memory_bytes > 0
    check(f"measure_costs on {device.type}", ok, f"latency {record.latency_ms:.2f} ms, peak memory "
          f"{record.peak_memory_bytes / 2**20:.1f} MiB, {record.macs / 1e6:.1f} MMACs")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    device = torch.device(p.parse_args(argv).device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device; these checks need a GPU", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU dry run"
    print(f"{name}, torch {torch.__version__}", flush=True)
    check_models(device)
    check_export(device)
    check_trial(device)
    check_costs(device)
    print(f"\n{len(failures)} failed" + (f": {', '.join(failures)}" if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
