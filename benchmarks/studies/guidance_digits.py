"""Classifier-free guidance measured on class-conditional digits: does a stronger scale make samples of the asked
class, and what does it cost in fd?

sklearn's digits have 10 labels. Each (method, scale, seed) trains the digits config with `model.class_conditional=true`
at the flow-map tables' budget (3000 steps), and samples 2000 images, 200 of each class in turn, at 1 and 2 steps.
  accuracy  the share of samples that the project's digits classifier (imm/metrics/features.py, trained once on
            the training set; held-out accuracy in the table's header) reads as the class asked for
  fd        the Fréchet distance of the same classifier's features of the samples to the training set's (the FID
            convention, as the flow-map tables' fd)
How each method guides:
  imm       at sampling (`sample.cfg_scale` w: G(null) + w (G(c) - G(null))), so one training serves every scale
  meanflow  trained in (`meanflow.guidance` omega: labelled samples regress on omega v + (1 - omega) u(z, t, t | null))
  tvm       trained in (`tvm.guidance` w: its flow-matching half regresses on w v + (1 - w) u(z, s, s | null))
Scale 1 is no guidance. iMF is not in the table: its guidance as a network input is not built.

    .venv/bin/python -m benchmarks.studies.guidance_digits [--scales 1 2 4] [--seeds 2]

Writes results.json and tables.md to --out (default docs/results/guidance_digits); trained models' scores are
cached under --cache by a digest of the resolved config.
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from benchmarks.studies.common import mean_spread, publish, train_ema

METHODS = ("imm", "meanflow", "tvm")
TRAINED_IN = {"meanflow": "meanflow.guidance", "tvm": "tvm.guidance"}  # the rest guide at sampling
STEPS = (1, 2)
N_SAMPLES = 2000
BUDGET = 3000
OUT = Path("docs/results/guidance_digits")


def job_config(method: str, scale: float, seed: int, budget: int = BUDGET):
    """The digits config, class-conditional, at `budget` steps, with the method's trained-in guidance at `scale`."""
    from imm.config import load_config

    guided = [f"{TRAINED_IN[method]}={scale}"] if method in TRAINED_IN else []
    return load_config("digits", [f"method={method}", "model.class_conditional=true", f"train.steps={budget}",
                                  f"train.seed={seed}", "eval.every=1000000", *guided])


def score(method: str, scales: tuple[float, ...], seed: int, cache: str, budget: int = BUDGET) -> list[dict]:
    """Train (method, seed) at each scale it needs (one for sampling-time guidance) and score every scale at each
    of STEPS: [{method, scale, seed, steps, accuracy, fd, train_s}], cached as JSON per trained model."""
    import torch

    from benchmarks.studies.suite2d import cache_file

    torch.set_num_threads(1)
    rows = []
    trained = [(s, job_config(method, s, seed, budget)) for s in scales] if method in TRAINED_IN else \
        [(None, job_config(method, 1.0, seed, budget))]
    for trained_scale, cfg in trained:
        sampled = scales if trained_scale is None else (1.0,)
        out = cache_file(cache, cfg).with_suffix(".w" + "-".join(f"{w:g}" for w in sampled) + ".json")
        if not out.is_file():
            out.write_text(json.dumps(evaluate(cfg, sampled)))
        for row in json.loads(out.read_text()):
            rows.append({**row, "method": method, "seed": seed,
                         "scale": row["scale"] if trained_scale is None else trained_scale})
    return rows


def evaluate(cfg, sample_scales: tuple[float, ...]) -> list[dict]:
    """`cfg` trained here, its EMA model sampled at each sampling scale and step count, read by the classifier."""
    import torch

    from imm.data import load_data
    from imm.methods import build_model
    from imm.metrics.features import cache_dir, trained_classifier
    from imm.metrics.frechet import feature_statistics, frechet_distance
    from imm.sampling import generate

    state = train_ema(cfg)
    data = load_data(cfg.data)
    model = build_model(cfg, tuple(state["data_shape"]), state["sigma_d"], data.num_classes)
    model.load_state_dict(state["ema"])
    model.eval()
    net, _, _ = trained_classifier(data, cache_dir(None))
    reference = feature_statistics(net.features(data.train).double().numpy())
    labels = torch.arange(N_SAMPLES) % data.num_classes
    rows = []
    for w in sample_scales:
        cfg.sample.cfg_scale = w
        for k in STEPS:
            with torch.no_grad():
                x = generate(model, cfg, N_SAMPLES, k, seed=0, data_shape=tuple(state["data_shape"]), labels=labels)
                accuracy = float((net(x).argmax(1) == labels).float().mean())
                fd = frechet_distance(*feature_statistics(net.features(x).double().numpy()), *reference)
            rows.append({"scale": w, "steps": k, "accuracy": accuracy, "fd": fd, "train_s": state["train_s"]})
    return rows


def table(results: list[dict]) -> str:
    head = " | ".join(f"{m} {k} step{'s' * (k > 1)}" for k in STEPS for m in ("accuracy", "fd"))
    rows = [f"| method | scale | {head} |", "|---|---|" + "---|" * 2 * len(STEPS)]
    groups: dict[tuple, dict[int, list[dict]]] = {}
    for r in results:
        groups.setdefault((METHODS.index(r["method"]), r["scale"]), {}).setdefault(r["steps"], []).append(r)
    for (m, scale), by_steps in sorted(groups.items()):
        cells = [mean_spread([r[key] for r in by_steps[k]], fmt)
                 for k in STEPS for key, fmt in (("accuracy", "{:.3f}"), ("fd", "{:.2f}"))]
        rows.append(f"| {METHODS[m]} | {scale:g} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--scales", nargs="+", type=float, default=[1.0, 2.0, 4.0])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--budget", type=int, default=BUDGET, help=f"training steps (default {BUDGET})")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cache", default="imm-runs/guidance_digits")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    from imm.config import load_config
    from imm.data import load_data
    from imm.metrics.features import cache_dir, trained_classifier

    _, heldout_accuracy, _ = trained_classifier(load_data(load_config("digits", []).data), cache_dir(None))
    # one job per trained model, the trained-in guidance's first (they train one model per scale)
    jobs = [(m, (s,) if m in TRAINED_IN else tuple(args.scales), seed, args.cache, args.budget)
            for m in sorted(args.methods, key=lambda m: m not in TRAINED_IN)
            for s in (args.scales if m in TRAINED_IN else [None]) for seed in range(args.seeds)]
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        results = [row for rows in pool.map(score, *zip(*jobs, strict=True)) for row in rows]
    text = (f"Class-conditional digits, {args.budget} training steps, {N_SAMPLES} samples (200 per class); accuracy: the "
            f"digits classifier's reading of the asked class (its held-out accuracy on real digits: "
            f"{heldout_accuracy:.3f}); fd to the training set in its features. Mean ± half the range over "
            f"{args.seeds} seeds:\n\n{table(results)}\n")
    publish(args.out, results, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
