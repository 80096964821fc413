"""`imm-orch promote`: register the best finished run's model and point a registry alias at it."""

from __future__ import annotations

from orchestrator import terminal
from orchestrator.commands import Command, register, tracking_flags

EXAMPLES = """\
examples:
  imm-orch promote --sweep toy2d_smoke --metric energy/steps_2          # best trial -> models:/toy2d_smoke@champion
  imm-orch promote --sweep cifar10_imm_ablation --metric fid/steps_2 --model-name imm-cifar10
  imm-orch promote --run-id 3f2c... --metric fid/steps_1 --alias challenger
  imm-orch promote --sweep my_sweep --metric acc --mode max

Each promotion registers the run's checkpoint as a model version (an MLflow PyTorch model: `imm-orch sample`
and mlflow.pytorch.load_model read it), tags it with its lineage and metrics, and points the alias at it.
"""


def arguments(parser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--run-id", default=None, help="promote this MLflow run")
    which.add_argument("--sweep", default=None, help="promote the best trial run of this sweep")
    parser.add_argument("--metric", required=True, help="e.g. fid/steps_1, energy/steps_2")
    parser.add_argument("--mode", default="min", choices=["min", "max"], help="min (default) or max is best")
    parser.add_argument("--alias", default="champion", help="the registry alias to set (default: champion)")
    parser.add_argument("--model-name", default=None, help="registered model name (default: the sweep or run name)")
    tracking_flags(parser)


def run(args) -> int:
    from orchestrator.registry.promote import promote
    from orchestrator.track import tracking

    out = terminal.out()
    uri = tracking.default_tracking_uri(args.tracking_uri)
    tracking.check_reachable(uri)
    p = promote(uri, metric=args.metric, run_id=args.run_id, sweep=args.sweep, mode=args.mode, alias=args.alias,
                model_name=args.model_name)
    how = "registered as new version" if p.new_version else "already registered as version"
    print(f"run {p.run_id} ({p.metric} = {p.value:.6g}) {how} {p.version} of {p.model_name!r}", file=out)
    moved = f" (it pointed at version {p.previous_version})" if p.previous_version not in (None, p.version) else ""
    print(f"alias {p.alias!r} -> version {p.version}{moved}", file=out)
    print(f"model uri: {p.uri}", file=out, flush=True)
    return 0


COMMAND = register(Command(
    name="promote",
    help="register the best finished run's model and point an alias at it",
    description="Pick the best FINISHED run (of a sweep, or the one given) by a metric, register its checkpoint "
                "as a new model version with lineage tags, and set the alias.",
    examples=EXAMPLES,
    arguments=arguments,
    run=run,
))
