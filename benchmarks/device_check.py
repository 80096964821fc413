"""The GPU check in one command, for a bare GPU machine (torch, numpy, pytest; no Ray, MLflow or Optuna): `imm/` alone.

    python3 benchmarks/device_check.py --out OUT           # on a GPU box, under 8 minutes
    python3 benchmarks/device_check.py --smoke --out OUT   # on a CPU, at toy size (CI runs this)

It runs as a file (above) or as `python3 -m benchmarks.device_check` from the checkout's root; each section runs as
the module, from the root, so that `imm` and `benchmarks` import from the checkout without being installed.

If omegaconf is missing it is installed from the wheels in --wheels (default .whl/, git-ignored: made where there is
a network with `pip wheel --no-deps -w .whl omegaconf==2.3.0 antlr4-python3-runtime==4.9.3`) into a temporary folder;
checked in a bare venv with only torch, numpy, pyyaml, pyarrow, matplotlib, scikit-learn, pillow and pytest.
Each section runs in its own process under its own time limit, and OUT/device_check.json is rewritten after every
section, so a run cut short still reports what it measured. The sections and their targets (issue 24):

- cuda_tests: imm/'s tests that need no Ray or MLflow, on the GPU (pytest --noconftest).
- gpu_step: benchmarks/speed/gpu_step.py on the paper's DDPM++: eager fp32 against bf16 + compile + channels-last + fused
  optimizer (target fast/eager >= 1.8), IMM against flow matching (IMM/FM step time <= 1.35).
- mfu: DiT-B/2 (ImageNet latents) and DDPM++ (CIFAR-10) IMM training steps, bf16 + compile; model FLOPs utilisation
  against a bf16 8192^3 matrix product timed in the same run (target DiT-B/2 >= 35%). FLOPs are counted by
  torch.utils.flop_counter over one eager step: every matmul, convolution and attention of the online pass, its
  backward, and IMM's no-grad target pass (which is real work each step); elementwise ops are not counted.
- train: 3 minutes of bf16 IMM training of DDPM++ (cifar10.yaml at its per-GPU batch, 512) on CIFAR-shaped
  synthetic data through imm.training.loop.train_loop: loss finite, skipped steps, images/s, peak memory.
- sampling: 1-step IMM against 64-step flow-matching sampling throughput on DDPM++ (target >= 50x).
- separation: the bf16/TF32 measurement of tests/test_bf16_times.py on the GPU, full-size networks: does
  G(x_t, s, r) - G(x_t, s, t) survive low precision at t = 0.99, with no floor, the paper's 1e-4 and bf16's 1e-3?
Compile time is reported apart from the step times.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Each section's time limit (s), in the order they run: the tests and the training first, the timings after. The whole
# run also stops at --budget (default 470 s, under 8 minutes), each section getting at most what is left.
SECTIONS = {"cuda_tests": 90, "train": 215, "gpu_step": 100, "mfu": 100, "sampling": 30, "separation": 30}
TRAIN_SECONDS = 180
SMOKE_LIMIT = 240  # seconds per section on a CPU
TESTS = ["tests/test_accelerate.py", "tests/test_model.py", "tests/test_finite_steps.py", "tests/test_bf16_times.py",
         "tests/test_official_sampler.py", "tests/test_shortcut.py", "tests/test_mapping.py", "tests/test_weighting.py",
         "tests/test_kernels_losses.py", "tests/test_sampling.py"]
TARGETS = {"fast_over_eager": 1.8, "imm_over_fm_step": 1.35, "dit_b2_mfu": 0.35, "imm1_over_fm64": 50.0}


def ensure_omegaconf(wheels: Path) -> None:
    """omegaconf importable in the sections' processes (this one does not import it): as installed, or from the
    carried wheels into a temporary folder on their PYTHONPATH."""
    try:
        import omegaconf  # noqa: F401
        return
    except ImportError:
        pass
    target = Path(tempfile.mkdtemp(prefix="imm-site-"))
    found = sorted(wheels.glob("*.whl"))
    if not found:
        sys.exit(f"omegaconf is not installed and --wheels {wheels} holds no wheels (omegaconf, antlr4-python3-runtime)")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(target),
                    *map(str, found)], check=True)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")]))


# --- the sections: each returns a JSON-able dict ---------------------------------------------------------------------

def cuda_tests(smoke: bool, device: str) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "--noconftest", "-p", "no:cacheprovider", "-m", "not slow", *TESTS]
    if smoke:  # CI runs these tests itself; here only that the section works
        cmd += ["-k", "forced_to_s_equal_t and laplace"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)  # in the section's process group
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    return {"returncode": out.returncode, "summary": lines[-1] if lines else "", "failures":
            [line for line in lines if line.startswith(("FAILED", "ERROR"))][:20]}


def gpu_step(smoke: bool, device: str) -> dict:
    from benchmarks.speed import gpu_step as bench

    args = ["--device", device, "--batches", "512", "--steps", "10", "--repeats", "3", "--warmup", "3"]
    if smoke:
        args = ["--device", device, "--channels", "16", "--batches", "8", "--no-compile", "--steps", "2",
                "--repeats", "1", "--warmup", "1"]
    rate = bench.main(args)
    b = int(args[args.index("--batches") + 1])
    return {"images_per_s": {f"{m} {mode}": r for (m, mode, _), r in rate.items()},
            "fast_over_eager": {m: rate[(m, "fast", b)] / rate[(m, "eager fp32", b)] for m in ("imm", "fm")},
            "imm_over_fm_step": {mode: rate[("fm", mode, b)] / rate[("imm", mode, b)] for mode in ("fast", "eager fp32")}}


def matmul_rate(device: str, n: int) -> float:
    """FLOP/s of a bf16 n x n x n matrix product here (mean of 10 after 3 warm-ups): the utilisation's yardstick."""
    import torch

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    sync(device)
    return 10 * 2 * n**3 / (time.perf_counter() - t0)


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def training_step(config: str, overrides: list[str], shape, classes: int, batch: int, device: str, compile_: bool):
    """(step(), model): one bf16 IMM training step of `config` on random data, with every GPU switch on."""
    from benchmarks.speed.gpu_step import training_step as build
    from imm.config import load_config

    cfg = load_config(config, [*overrides, f"train.batch_size={batch}", "trainer.num_workers=1",
                               "train.precision=bf16" if device == "cuda" else "train.precision=fp32",
                               "data.name=8gaussians"])
    return build(cfg, shape, classes, device, compile_)


def mfu(smoke: bool, device: str) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    peak = matmul_rate(device, 1024 if smoke else 8192)
    nets = {"dit_b2": ("imagenet256_dit", ["model.dit=B/2"], (4, 32, 32), 1000, 256),
            "ddpmpp": ("cifar10", [], (3, 32, 32), 0, 512)}
    if smoke:
        nets = {"dit_b2": ("imagenet256_dit", ["model.dit=S/8"], (4, 16, 16), 10, 8),
                "ddpmpp": ("cifar10", ["model.channels=16", "model.num_blocks=1"], (3, 16, 16), 0, 8)}
    out = {"matmul_tflops": peak / 1e12}
    for name, (config, overrides, shape, classes, batch) in nets.items():
        step, model = training_step(config, overrides, shape, classes, batch, device, compile_=not smoke)
        with FlopCounterMode(display=False) as counter:
            step(model)  # eager, so that every op is seen
        flops = counter.get_total_flops()
        t0 = time.perf_counter()
        step()  # the first compiled step compiles
        sync(device)
        compile_s = time.perf_counter() - t0
        for _ in range(2):
            step()
        n = 3 if smoke else 10
        sync(device)
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        sync(device)
        seconds = (time.perf_counter() - t0) / n
        out[name] = {"batch": batch, "gflop_per_step": flops / 1e9, "step_s": seconds, "compile_s": compile_s,
                     "tflops": flops / seconds / 1e12, "mfu": flops / seconds / peak}
    out["dit_b2_mfu"] = out["dit_b2"]["mfu"]
    return out


def synthetic_cifar(root: Path, n_train: int = 10000, n_test: int = 1000) -> None:
    """CIFAR-10's python batches with smooth random images (low-frequency noise, upsampled): CIFAR-shaped data."""
    import numpy as np

    g = np.random.default_rng(0)

    def images(n):
        low = g.normal(size=(n, 3, 4, 4))
        x = np.kron(low, np.ones((1, 1, 8, 8))) + 0.3 * g.normal(size=(n, 3, 32, 32))
        return np.clip(128 + 50 * x, 0, 255).astype(np.uint8).reshape(n, -1)

    root.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        n = n_test if name == "test_batch" else n_train // 5
        with (root / name).open("wb") as f:
            labels = g.integers(0, 10, n).tolist()  # Python ints, as in the official format
            pickle.dump({b"data": images(n), b"labels": labels}, f)


class Enough(Exception):
    """Raised from the report callback when the time is up."""


def train(smoke: bool, device: str) -> dict:
    import torch

    from imm.config import load_config
    from imm.methods.imm import resolved_delta
    from imm.training.accelerate import resolve_precision
    from imm.training.loop import train_loop

    seconds = 5 if smoke else TRAIN_SECONDS  # smoke: that the section runs, not a rate worth reading
    data = Path(tempfile.mkdtemp(prefix="imm-cifar-")) / "cifar-10-batches-py"
    synthetic_cifar(data, 1000 if smoke else 10000, 100 if smoke else 1000)
    overrides = [f"data.name=cifar10:{data}", "trainer.num_workers=1", "train.steps=1000000", "eval.every=1000000",
                 "eval.features=none", "train.log_every=5" if smoke else "train.log_every=50",
                 "train.checkpoint_every=1000000", "train.batch_size=16" if smoke else "train.batch_size=512"]
    if smoke:
        overrides += ["model.channels=16", "model.num_blocks=1", "model.attn_resolutions=[]"]
    cfg = load_config("cifar10", overrides)
    reports: list[dict] = []
    t0 = time.perf_counter()

    def report(metrics, checkpoint_dir):
        reports.append(dict(metrics))
        if time.perf_counter() - t0 > seconds and len(reports) >= 2:  # a rate past the first window, on a slow host too
            raise Enough

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        train_loop(cfg, device=device, report=report)
    except Enough:
        pass
    last = reports[-1] if reports else {}
    # the first window holds the start-up (cuDNN autotuning, allocations)
    rates = [m["throughput/samples_per_s"] for m in reports[1:]] or [float("nan")]
    return {"steps": int(last.get("step", 0)), "seconds": time.perf_counter() - t0, "batch": cfg.train.batch_size,
            "precision": "bf16" if device == "cuda" else "fp32",
            "imm_delta": resolved_delta(resolve_precision(cfg, torch.device(device))),
            "loss_first": reports[0]["train/loss"] if reports else None, "loss_last": last.get("train/loss"),
            "loss_finite": all(math.isfinite(m["train/loss"]) for m in reports) and bool(reports),
            "skipped_steps": last.get("train/skipped_steps"), "images_per_s": statistics.median(rates),
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None}


def sampling(smoke: bool, device: str) -> dict:
    import torch

    from imm.config import load_config
    from imm.methods import build_model
    from imm.sampling import generate

    n = 16 if smoke else 1000
    small = ["model.channels=16", "model.num_blocks=1"] if smoke else []
    out = {}
    for method, steps in (("imm", 1), ("fm", 64)):
        cfg = load_config("cifar10", [f"method={method}", "data.name=8gaussians", *small])
        model = build_model(cfg, (3, 32, 32), 0.5).to(device).eval()
        generate(model, cfg, n, steps, seed=0, data_shape=(3, 32, 32), batch_size=n)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        x = generate(model, cfg, n, steps, seed=0, data_shape=(3, 32, 32), batch_size=n)
        sync(device)
        out[f"{method}_{steps}_images_per_s"] = n / (time.perf_counter() - t0)
        out[f"{method}_{steps}_finite"] = bool(torch.isfinite(x).all())
    out["imm1_over_fm64"] = out["imm_1_images_per_s"] / out["fm_64_images_per_s"]
    return out


def separation(smoke: bool, device: str) -> dict:
    import torch

    from imm.config import load_config
    from imm.maths.mapping import mapping_fn
    from imm.methods import build_model

    nets = {"ddpmpp": ("cifar10", [], (3, 32, 32)), "dit_b2": ("imagenet256_dit", ["model.dit=B/2"], (4, 32, 32))}
    if smoke:
        nets = {"ddpmpp": ("cifar10", ["model.channels=16", "model.num_blocks=1"], (3, 16, 16))}
    modes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    out = {}
    for name, (config, overrides, shape) in nets.items():
        cfg = load_config(config, [*overrides, "data.name=8gaussians", "model.class_conditional=false"])
        torch.manual_seed(0)
        model = build_model(cfg, shape, 0.5, 0).to(device).eval()
        with torch.no_grad():
            for p in model.parameters():
                if p.ndim and float(p.abs().max()) == 0:
                    p.normal_(0, 0.05)
        x = torch.randn(8, *shape, device=device) * 0.5
        t, s = torch.full((8,), 0.99, device=device), torch.full((8,), 0.006, device=device)
        for delta in (0.0, 1e-4, 1e-3):
            r = mapping_fn(s, t, model.traj, cfg.imm.mapping, cfg.imm.k, delta=delta)
            with torch.no_grad():
                torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
                exact = model.network_output(x, s, r) - model.network_output(x, s, t)
                torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
                tf32 = model.network_output(x, s, r) - model.network_output(x, s, t)
                out[f"{name} tf32 delta={delta}"] = float((tf32 - exact).norm() / exact.norm())
                for mode, dtype in modes.items():
                    with torch.autocast(device, dtype=dtype):
                        low = model.network_output(x, s, r).float() - model.network_output(x, s, t).float()
                    out[f"{name} {mode} delta={delta}"] = float((low - exact).norm() / exact.norm())
    return out


RUN = {"cuda_tests": cuda_tests, "gpu_step": gpu_step, "mfu": mfu, "train": train, "sampling": sampling,
       "separation": separation}


def verdict(results: dict) -> dict:
    """Each target against what was measured (None where the section did not report)."""
    get = lambda section, *keys: _dig(results.get(section, {}), keys)  # noqa: E731
    fast = get("gpu_step", "fast_over_eager")
    checks = {
        "fast_over_eager": (min(fast.values()) if fast else None, ">=", TARGETS["fast_over_eager"]),
        "imm_over_fm_step": (get("gpu_step", "imm_over_fm_step", "fast"), "<=", TARGETS["imm_over_fm_step"]),
        "dit_b2_mfu": (get("mfu", "dit_b2_mfu"), ">=", TARGETS["dit_b2_mfu"]),
        "imm1_over_fm64": (get("sampling", "imm1_over_fm64"), ">=", TARGETS["imm1_over_fm64"]),
        "train_loss_finite": (get("train", "loss_finite"), "==", True),
        "cuda_tests_pass": (get("cuda_tests", "returncode") == 0 if "cuda_tests" in results else None, "==", True),
    }
    return {k: {"value": v, "target": f"{op} {t}", "met": None if v is None else
                (v >= t if op == ">=" else v <= t if op == "<=" else v == t)} for k, (v, op, t) in checks.items()}


def _dig(d, keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def run_section(name: str, out: Path, smoke: bool, limit: float) -> dict:
    """One section in its own process group, killed whole (its pytest or compile workers too) at `limit`."""
    import signal

    if limit <= 0:
        return {"error": "not run: the run's --budget was spent"}
    cmd = [sys.executable, "-m", "benchmarks.device_check", "--out", str(out.resolve()), "--section", name,
           *(["--smoke"] if smoke else [])]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"error": f"cut at its {limit:g}s limit"}
    if proc.returncode != 0:
        print(stderr[-3000:], file=sys.stderr)
        return {"error": (stderr or stdout).strip().splitlines()[-1:]}
    return json.loads((out / f"{name}.json").read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for device_check.json (rewritten after every section)")
    p.add_argument("--smoke", action="store_true", help="toy sizes on whatever device is here (CI, on a CPU)")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    p.add_argument("--limit", type=float, default=None, help="seconds per section (default: each section's own)")
    p.add_argument("--budget", type=float, default=470, help="seconds for the whole run (default 470)")
    p.add_argument("--wheels", type=Path, default=ROOT / ".whl", help="omegaconf's wheels, if it is not installed")
    p.add_argument("--section", help=argparse.SUPPRESS)  # a child process: run this one section
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ensure_omegaconf(args.wheels)
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.section:  # the child: one section, its answer in a file
        result = RUN[args.section](args.smoke, device)
        (out / f"{args.section}.json").write_text(json.dumps(result, indent=1, default=str))
        return 0
    results: dict = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
                     "cuda": torch.version.cuda, "smoke": args.smoke, "seconds": {}}
    start = time.perf_counter()
    for name in args.sections:
        left = args.budget - (time.perf_counter() - start)
        limit = min(args.limit or (SMOKE_LIMIT if args.smoke else SECTIONS[name]), left)
        t0 = time.perf_counter()
        print(f"== {name} (limit {limit:.0f}s)", flush=True)
        results[name] = run_section(name, out, args.smoke, limit)
        results["seconds"][name] = round(time.perf_counter() - t0, 1)
        results["targets"] = verdict(results)
        (out / "device_check.json").write_text(json.dumps(results, indent=1, default=str))
        print(json.dumps(results[name], indent=1, default=str), flush=True)
    print(json.dumps(results["targets"], indent=1, default=str))
    return 0 if all("error" not in results[n] for n in args.sections) else 1


if __name__ == "__main__":
    sys.exit(main())
