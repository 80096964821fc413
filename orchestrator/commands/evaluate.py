"""`imm-orch eval`: sample-quality metrics for any model URI, logged to an MLflow run of their own."""

from __future__ import annotations

from orchestrator import terminal
from orchestrator.commands import Command, check_model_store, model_flags, overrides_arg, register, tracking_flags

EXAMPLES = """\
examples:
  imm-orch eval --model models:/toy2d_smoke@champion --steps 1 2 4 8
  imm-orch eval --model runs:/3f2c... --steps 2 --n 50000 eval.inception_weights=s3://weights/pt_inception.pth
  imm-orch eval --model ckpt/checkpoint.pt --steps 1 --no-log

Metrics: energy/steps_K (any data), fid/steps_K (Inception features, with eval.inception_weights) or fd/steps_K
(the project's own extractor: a classifier trained once on labelled data, random Fourier features otherwise).
"""


def arguments(parser) -> None:
    model_flags(parser)
    overrides_arg(parser, "eval.* overrides, e.g. eval.inception_weights=PATH eval.features=rff")
    parser.add_argument("--steps", nargs="+", default=["1"], help="sampling step counts: 1 2 4 or 1,2,4 (default: 1)")
    parser.add_argument("--n", type=int, default=None, help="samples per step count (default: the run's eval.n_samples)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (default: the run's eval.seed)")
    parser.add_argument("--experiment", default=None, help="MLflow experiment (default: the model's run's, else imm)")
    parser.add_argument("--no-log", action="store_true", help="print the metrics only; log nothing to MLflow")
    tracking_flags(parser)


def step_counts(values: list[str], overrides: list[str]) -> list[int]:
    """`--steps 1 2 4` or `1,2,4`; argparse hands `--steps 1 2 key=value`'s override to --steps: it joins `overrides`."""
    steps = []
    for part in ",".join(values).split(","):
        if "=" in part:
            overrides.append(part)
        elif part.isdigit() and int(part) >= 1:
            steps.append(int(part))
        else:
            raise ValueError(f"--steps: {part!r} is not a step count (allowed: integers >= 1)")
    return steps


def run(args) -> int:
    from orchestrator.run.evaluation import evaluate_model

    out = terminal.out()
    check_model_store(args)
    overrides = list(args.overrides)
    steps = step_counts(args.steps, overrides)
    if args.n is not None and args.n < 2:
        raise ValueError(f"--n: {args.n} is out of range (allowed: >= 2)")
    res = evaluate_model(args.model, steps=steps, n=args.n, seed=args.seed, overrides=overrides,
                         tracking_uri=args.tracking_uri, experiment=args.experiment, device=args.device,
                         log=not args.no_log, trust_pickle=args.trust_pickle)
    for name, value in sorted(res.metrics.items()):
        print(f"{name:18s} {value:.6g}", file=out)
    extractor = res.tags.get("imm.eval.extractor", "none")
    print(f"features: {res.tags['imm.eval.features']} ({extractor})", file=out)
    if res.run_id:
        print(f"mlflow run id: {res.run_id}", file=out, flush=True)
    return 0


COMMAND = register(Command(
    name="eval",
    help="compute and log sample-quality metrics for a model URI",
    description="Evaluate a model (runs:/, models:/, a path or s3:// URI) at the given step counts; the metrics "
                "are printed and logged to a new MLflow run that points back at the model.",
    examples=EXAMPLES,
    arguments=arguments,
    run=run,
    overrides=True,
))
