"""`imm-orch status`: a sweep's trials and the best one so far, from its Optuna study."""

from __future__ import annotations

import os
from pathlib import Path

from orchestrator import terminal
from orchestrator.commands import Command, output_flags, register

EXAMPLES = """\
examples:
  imm-orch status toy2d_smoke                            # the study in ./imm-runs/optuna.journal
  imm-orch status sweeps/toy2d_smoke.yaml                # the study where that sweep file keeps it
  imm-orch status my_sweep --storage postgresql://imm@HEAD:5432/optuna   # docker/compose.yaml's database
"""


def arguments(parser) -> None:
    parser.add_argument("sweep", help="a sweep name, or its YAML file")
    parser.add_argument("--storage", default=None,
                        help="the study storage (default: the file's, else $IMM_OPTUNA_STORAGE, "
                             "else journal:./imm-runs/optuna.journal)")
    output_flags(parser)


def run(args) -> int:
    import optuna

    from orchestrator.sweep.report import format_status
    from orchestrator.sweep.spec import load_sweep
    from orchestrator.sweep.study import open_storage, redact, storage_url

    if args.sweep.endswith((".yaml", ".yml")):
        sweep = load_sweep(args.sweep)
        name, url = sweep.name, args.storage or storage_url(sweep)
    else:
        from imm.config import StorageConfig
        from orchestrator.sweep.study import JOURNAL_FILE

        name = args.sweep
        url = args.storage or os.environ.get("IMM_OPTUNA_STORAGE") or \
            f"journal:{Path(StorageConfig.root).resolve() / JOURNAL_FILE}"
    if url.startswith("journal:") and not Path(url[len("journal:"):]).is_file():
        raise ValueError(f"no study storage at {url[len('journal:'):]} (pass --storage, or the sweep's YAML file)")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(url))
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(open_storage(url))]
        raise ValueError(f"no sweep {name!r} in {redact(url)} (sweeps there: {names})") from None
    print(format_status(study, redact(url)), file=terminal.out())
    return 0


COMMAND = register(Command(
    name="status",
    help="the trials of a sweep and the best one so far",
    description="Print a sweep's trials (state, objective, params, time) from its Optuna study.",
    examples=EXAMPLES,
    arguments=arguments,
    run=run,
))
