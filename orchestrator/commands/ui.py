"""`imm-orch ui`: the MLflow UI on this project's tracking store, with deep links printed; it ends with the command."""

from __future__ import annotations

import sys
from pathlib import Path

from orchestrator import terminal
from orchestrator.commands import Command, register, tracking_flags

EXAMPLES = """\
examples:
  imm-orch ui                                            # http://127.0.0.1:5000 on ./imm-runs/mlflow.db
  imm-orch ui --port 5050 --tracking-uri sqlite:///other/mlflow.db
  imm-orch ui --host 0.0.0.0                             # reachable from other machines (no authentication!)
"""


def arguments(parser) -> None:
    parser.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to bind (default 127.0.0.1: this machine only; the UI has no authentication)")
    tracking_flags(parser)


def ui_command(args) -> list[str]:
    """The `mlflow server` command line for the store (checked: it must exist and not be a server already)."""
    from orchestrator.track import tracking

    uri = tracking.default_tracking_uri(args.tracking_uri)
    if uri.startswith(("http://", "https://", "databricks")):
        raise ValueError(f"--tracking-uri: {uri} is a tracking server already; open it in a browser")
    if not 0 < args.port < 65536:
        raise ValueError(f"--port: {args.port} is out of range (allowed: 1-65535)")
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", args.host,
           "--port", str(args.port), "--workers", "1"]
    if uri.startswith("sqlite:///"):
        if not Path(uri[len("sqlite:///"):]).is_file():
            raise FileNotFoundError(f"no MLflow store at {uri[len('sqlite:///'):]} yet: run `imm-orch train` or "
                                    "`imm-orch sweep` first, or pass --tracking-uri")
        cmd += ["--artifacts-destination", tracking.artifact_root(uri)]  # new experiments' artifacts as imm-orch puts them
    return cmd


def run(args) -> int:
    from orchestrator.infra.processes import Stopped, owned_process
    from orchestrator.track.links import ui_links

    out = terminal.out()
    cmd = ui_command(args)
    store = cmd[cmd.index("--backend-store-uri") + 1]
    print(f"MLflow UI: http://{args.host}:{args.port}  (store {store}; Ctrl-C stops it)", file=out, flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: --host {args.host}: anyone who can reach this port can read and change runs", file=terminal.err())
    for line in ui_links(store, f"http://{args.host}:{args.port}/"):
        print(line, file=out, flush=True)
    try:  # the server and its workers end with this command, however it ends (orchestrator/infra/processes.py)
        with owned_process(cmd) as server:
            return server.wait()
    except KeyboardInterrupt:
        return 0
    except Stopped as e:
        return e.code


COMMAND = register(Command(
    name="ui",
    help="the MLflow UI on this project's tracking store",
    description="Start `mlflow server` on the tracking store (the embedded SQLite file by default), serving its "
                "artifacts; Ctrl-C stops it.",
    examples=EXAMPLES,
    arguments=arguments,
    run=run,
))
