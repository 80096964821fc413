"""How the sweep driver's own cost grows with the size of a sweep: the real driver (`SweepRunner`: study, proposals,
MLflow records, the boards and the pruner's feed, progress, lease) over simulated trials.

SIMULATED TRIALS. This machine has 2 cores, so a trial here is not a training run: it is a coroutine in one Ray
actor (`TrialHost`) that opens its MLflow run as a trial's task does (`open_trial_run`), sleeps `--work` seconds,
pushes `--reports` synthetic reports to the trial's board through the worker's own path (`Pusher`), logs its final
metrics and closes its run. The cluster is a local Ray with `--concurrency` logical CPUs, one per trial. Everything
on the driver's side is the real code.

    efficiency   = sum of the trials' work (their sleeps) / (wall time x concurrency)   target >= 0.87 (Ray Tune: 0.87)
    occupancy    = sum of the trials' spans (their tasks, start to end) / (wall time x concurrency)
    gap          = seconds a slot stays empty per trial, from the end that freed it to the next start: the driver's
                   turnaround, in the first and the last tenth of the sweep (by start order)
    growth       = gap of the last tenth / gap of the first                         target <= 1.25
    own_s        = a trial's span beyond its work: opening and closing its MLflow run (here on the same 2 cores)
    driver CPU   = the driver process's CPU seconds / wall time (1.0 = one core)    target < 1 at 256 at a time
    mlflow/trial, study/trial = the driver's calls to the MLflow store and to the study's storage, per trial

    .venv/bin/python -m benchmarks.speed.sweep_scale [--trials 100 1000] [--concurrency 16] [--work 1.0]
        [--servers]   (PostgreSQL for the study and an `mlflow server` on PostgreSQL, started here: the cluster's
                       stores; default: the embedded ones, a journal file and SQLite, in a temporary folder)

REAL TRIALS (`--real`): tiny toy2d trials through the whole path (a trial's Ray task in a warm worker, its
training loop, its evaluation, its MLflow run), `--concurrency` at a time on a local Ray of that many CPUs. Their
work is not fixed, so the table is each trial's span (its study start to its end) and the start-to-start time
per slot, in the first and the last tenth of the sweep; flat is a last/first ratio near 1:

    .venv/bin/python -m benchmarks.speed.sweep_scale --real --trials 200 --concurrency 2
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import math
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SPACE = {"train.lr": {"low": 1e-4, "high": 3e-3, "log": True}, "imm.b": {"low": 2.0, "high": 8.0},
         "imm.a": {"low": 0.5, "high": 2.0}, "imm.group_size": {"choices": [2, 4, 8]}}
METRIC = "energy/steps_1"


def synthetic_value(params: dict, step: int, steps: int) -> float:
    """A made-up objective that TPE can learn (best at lr=1e-3, b=5, M=4), falling with the steps."""
    lr = math.log10(params["train.lr"]) + 3
    return (lr**2 + 0.05 * (params["imm.b"] - 5) ** 2 + 0.1 * (params["imm.group_size"] != 4)) * (1 + steps / step) / 2


class TrialHost:
    """Where the simulated trials run: one asyncio actor, a coroutine per trial (their work is a sleep)."""

    def __init__(self):
        self.spans: dict[int, tuple[float, float]] = {}
        self.opening, self.closing = [], []  # seconds each trial took to open and to close its run

    async def run(self, number: int, params: dict, plan, record, board, work_s: float, reports: int, steps: int):
        from orchestrator.run.board import Pusher
        from orchestrator.sweep.trials import TrialOutcome, open_trial_run

        t0 = time.time()
        run_id = await asyncio.to_thread(open_trial_run, plan, "local", record, board)
        self.opening.append(time.time() - t0)
        pusher = Pusher(board)
        for k in range(1, reports + 1):
            await asyncio.sleep(work_s / reports)
            step = steps * k // reports
            pusher.push({"step": step, "train/loss": 1.0 / k, METRIC: synthetic_value(params, step, steps)})
        metrics = {METRIC: synthetic_value(params, steps, steps), "time/train_s": work_s}
        t1 = time.time()
        await asyncio.to_thread(self._close, plan.tracking_uri, run_id, metrics, steps)
        self.closing.append(time.time() - t1)
        self.spans[number] = (t0, time.time())
        return TrialOutcome(metrics=metrics, work_s=work_s, run_id=run_id)

    @staticmethod
    def _close(tracking_uri: str, run_id: str, metrics: dict, step: int) -> None:
        """What rank 0 and the trial's task write at its end: the final metrics and the run's status."""
        from mlflow.entities import Metric

        from orchestrator.track import tracking

        mlc = tracking.client(tracking_uri)
        ts = int(time.time() * 1000)
        mlc.log_batch(run_id, metrics=[Metric(k, v, ts, step) for k, v in metrics.items()])
        tracking.close_run(mlc, run_id, "FINISHED")

    def spans_of(self) -> tuple[dict[int, tuple[float, float]], float, float]:
        mean = lambda xs: sum(xs) / max(len(xs), 1)  # noqa: E731
        return self.spans, mean(self.opening), mean(self.closing)


class Calls:
    """Counts the calls this process makes to the public methods of some classes (the MLflow store, the study's
    storage): the outermost ones only, not those a store makes to itself."""

    def __init__(self):
        self.n = collections.Counter()
        self.depth = threading.local()

    def watch(self, cls, label: str) -> None:
        for name, fn in list(vars(cls).items()):
            if name.startswith("_") or not callable(fn) or isinstance(fn, staticmethod | classmethod | type):
                continue

            def counted(*a, __fn=fn, __label=label, **k):
                depth = getattr(self.depth, __label, 0)
                self.n[__label] += depth == 0
                setattr(self.depth, __label, depth + 1)
                try:
                    return __fn(*a, **k)
                finally:
                    setattr(self.depth, __label, depth)

            setattr(cls, name, functools.wraps(fn)(counted))


class Phases:
    """Times the driver's steps per trial (ask, config, plan, record, submit, poll, finish): their mean milliseconds
    in the first and the last tenth of the calls, to show what grows."""

    def __init__(self):
        self.times: dict[str, list[float]] = collections.defaultdict(list)

    def wrap(self, owner, name: str, label: str) -> None:
        fn = getattr(owner, name)

        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.times[label].append(time.perf_counter() - t0)

        setattr(owner, name, timed)

    def table(self) -> str:
        rows = []
        for label, ts in self.times.items():
            tenth = max(len(ts) // 10, 1)
            first, last = sum(ts[:tenth]) / tenth * 1e3, sum(ts[-tenth:]) / tenth * 1e3
            rows.append(f"    {label:<8} calls {len(ts):>6}  first tenth {first:7.2f} ms  last tenth {last:7.2f} ms")
        return "\n".join(rows)


def watch_phases(phases: Phases) -> None:
    from orchestrator.sweep import outcomes, records, runner, space

    phases.wrap(runner, "ask_distinct", "ask")
    phases.wrap(space.Sweep, "trial_config", "config")
    phases.wrap(runner, "plan_run", "plan")
    phases.wrap(records.SweepRecords, "trial_record", "record")
    phases.wrap(outcomes.TrialOutcomes, "poll", "poll")
    phases.wrap(outcomes.TrialOutcomes, "finish", "finish")
    phases.wrap(runner.SweepRunner, "_close", "close")


def simulate(trials_module, host, work_s: float, reports: int, phases: Phases) -> None:
    """Point the driver's trial tasks at the host (the one change to the driver: where a trial's work runs)."""
    import ray

    def start_task(sweep, tr, ray_address):
        return host.run.remote(tr.number, tr.params, tr.plan, tr.record, tr.board, work_s, reports, tr.steps)

    def stop_task(sweep, tr, *, wait_s: float = 30.0):
        ray.cancel(tr.ref)

    trials_module.start_task, trials_module.stop_task = start_task, stop_task
    trials_module.warm_up = lambda sweep, n: []
    phases.wrap(trials_module, "start_task", "submit")


def run(n_trials: int, concurrency: int, work_s: float, reports: int, tracking_uri: str | None,
        study_storage: str | None, root: str, phases: Phases, profile: str | None = None) -> dict:
    import ray

    from orchestrator.sweep import trials as trials_module
    from orchestrator.sweep.runner import SweepRunner
    from orchestrator.sweep.spec import sweep_from_dict

    calls = Calls()
    from mlflow.store.tracking.abstract_store import AbstractStore
    from optuna.storages import BaseStorage

    for cls in _subclasses(AbstractStore):
        calls.watch(cls, "mlflow")
    for cls in _subclasses(BaseStorage):
        calls.watch(cls, "study")
    name = f"scale-{n_trials}x{concurrency}-{int(time.time())}"
    sweep = sweep_from_dict({
        "name": name, "base": {"config": "toy2d", "overrides": [f"storage.root={root}", "train.steps=1000",
                                                                  "eval.every=250"]},
        "space": SPACE, "objective": METRIC, "sampler": {"name": "tpe", "seed": 0}, "trials": n_trials,
        "max_concurrent": concurrency, "storage": study_storage,
        "resources": {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0}})
    ray.init(address="local", num_cpus=concurrency, include_dashboard=False, logging_level="ERROR",
             log_to_driver=False)
    try:
        host = ray.remote(num_cpus=0, max_concurrency=max(2 * concurrency, 32))(TrialHost).remote()
        phases.times.clear()
        simulate(trials_module, host, work_s, reports, phases)
        ru0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        calls.n.clear()
        runner = SweepRunner(sweep, ray_address="local", tracking_uri=tracking_uri, experiment="scale", resume=False,
                             trials=n_trials, stream=open(os.devnull, "w"))  # noqa: SIM115
        if profile:
            import cProfile

            with cProfile.Profile() as prof:
                result = runner.run()
            prof.dump_stats(profile)
        else:
            result = runner.run()
        wall = time.perf_counter() - t0
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        spans, opening, closing = ray.get(host.spans_of.remote())
    finally:
        ray.shutdown()
    gap_first, gap_last = slot_gaps(spans, concurrency)
    own = sum(e - s for s, e in spans.values()) / max(len(spans), 1) - work_s
    cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    done = len(spans)
    return {"trials": n_trials, "concurrency": concurrency, "complete": result.counts.get("complete", 0),
            "wall_s": wall, "efficiency": done * work_s / (wall * concurrency),
            "occupancy": sum(e - s for s, e in spans.values()) / (wall * concurrency), "gap_first": gap_first,
            "gap_last": gap_last, "own": own, "driver_cpu": cpu / wall,
            "driver_rss_mib": ru1.ru_maxrss / 1024, "mlflow_per_trial": calls.n["mlflow"] / n_trials,
            "study_per_trial": calls.n["study"] / n_trials,
            "phases": phases.table() + f"\n    trial's own: opens its run in {opening * 1e3:.1f} ms, closes it in "
                                       f"{closing * 1e3:.1f} ms (mean)"}


REAL_OVERRIDES = ["train.steps=10", "train.log_every=5", "train.checkpoint_every=10", "eval.every=10",
                  "eval.n_samples=200", "eval.steps=[1]"]  # a tiny trial: 10 steps, a 200-sample evaluation


def run_real(n_trials: int, concurrency: int, root: str) -> dict:
    """`n_trials` tiny real toy2d trials, `concurrency` at a time on a local Ray of that many CPUs: each trial's
    span and the start-to-start time per slot, first and last tenth (read from the study's trial times)."""
    import ray

    from orchestrator.sweep.runner import SweepRunner
    from orchestrator.sweep.spec import sweep_from_dict

    sweep = sweep_from_dict({
        "name": f"scale-real-{n_trials}x{concurrency}", "base": {
            "config": "toy2d", "overrides": [f"storage.root={root}", *REAL_OVERRIDES]},
        "space": SPACE, "objective": "energy/steps_1", "sampler": {"name": "tpe", "seed": 0}, "trials": n_trials,
        "max_concurrent": concurrency, "resources": {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0}})
    ray.init(address="local", num_cpus=concurrency, include_dashboard=False, logging_level="ERROR",
             log_to_driver=False)
    try:
        ru0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        runner = SweepRunner(sweep, ray_address="local", tracking_uri=None, experiment="scale", resume=False,
                             trials=n_trials, stream=open(os.devnull, "w"))  # noqa: SIM115
        result = runner.run()
        wall = time.perf_counter() - t0
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        ray.shutdown()
    trials = sorted((t for t in runner.study.get_trials(deepcopy=False) if t.datetime_complete),
                    key=lambda t: t.datetime_start)
    spans = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials]
    starts = [t.datetime_start.timestamp() for t in trials]
    per_slot = [(b - a) * concurrency for a, b in zip(starts, starts[1:], strict=False)]
    tenth = max(len(trials) // 10, 1)
    mean = lambda xs: sum(xs) / max(len(xs), 1)  # noqa: E731
    cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    return {"trials": n_trials, "concurrency": concurrency, "complete": result.counts.get("complete", 0),
            "wall_s": wall, "span_first": mean(spans[:tenth]), "span_last": mean(spans[-tenth:]),
            "start_first": mean(per_slot[:tenth]), "start_last": mean(per_slot[-tenth:]), "driver_cpu": cpu / wall,
            "driver_rss_mib": ru1.ru_maxrss / 1024}


def slot_gaps(spans: dict[int, tuple[float, float]], concurrency: int) -> tuple[float, float]:
    """The mean time a slot stays empty per trial, in the first and the last tenth of the sweep: from the end that
    freed it to the next start (the driver's turnaround: tell, record, ask, plan, submit). The first `concurrency`
    trials fill empty slots and are left out."""
    starts = sorted(s for s, _ in spans.values())
    ends = sorted(e for _, e in spans.values())
    gaps = [starts[j] - ends[j - concurrency] for j in range(concurrency, len(starts))] or [0.0]
    tenth = max(len(gaps) // 10, 1)
    return sum(gaps[:tenth]) / tenth, sum(gaps[-tenth:]) / tenth


@contextlib.contextmanager
def servers(folder: Path):
    """A PostgreSQL server (`tests.servers.PostgresServer`) with a database for the study and one for an `mlflow
    server` (2 workers, artifacts in `folder`); yields (study storage URL, tracking URI)."""
    from tests.servers import PostgresServer, free_port, wait_for_health

    pg = PostgresServer(Path(tempfile.mkdtemp(prefix="imm-scale-pg-")), free_port()).start()  # a folder its user owns
    try:
        study, backend = pg.database(), pg.database()
        port = free_port()
        with open(folder / "mlflow.log", "w") as log:
            proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
                                     "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1",
                                     "--port", str(port), "--workers", "2"], stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for_health(url, proc, folder / "mlflow.log")
            yield study, url
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    finally:
        pg.stop()


@contextlib.contextmanager
def kept_or_temporary(keep: Path | None, name: str):
    """A sweep's storage root: `keep`/`name` (emptied first, left behind) or a temporary folder. A folder of its
    own per sweep: this process's MLflow clients stay open on the ones before."""
    if keep is None:
        with tempfile.TemporaryDirectory(prefix="imm-scale-") as root:
            yield root
        return
    import shutil

    folder = keep / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    yield str(folder.resolve())


def _subclasses(cls) -> list:
    seen, todo = [], [cls]
    while todo:
        c = todo.pop()
        seen.append(c)
        todo += c.__subclasses__()
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16])
    parser.add_argument("--work", type=float, default=1.0, help="seconds of work per simulated trial")
    parser.add_argument("--reports", type=int, default=4, help="synthetic reports per trial (the pruner's feed)")
    parser.add_argument("--servers", action="store_true",
                        help="PostgreSQL and an mlflow server on it, started here (default: the embedded stores)")
    parser.add_argument("--phases", action="store_true", help="print the driver's time per step and trial")
    parser.add_argument("--profile", default=None, help="write the driver's cProfile stats of the last sweep here")
    parser.add_argument("--real", action="store_true", help="real tiny toy2d trials instead of simulated ones "
                        "(embedded stores; --work, --reports, --servers, --phases and --profile do not apply)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep each sweep's stores here, a folder per sweep (its MLflow runs, plots, study)")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # as imm-orch does: the report's downloads
    if args.real:
        real(args)
        return
    import mlflow.store.tracking.rest_store  # noqa: F401  (so that its class is counted too)
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    import optuna.storages  # noqa: F401

    phases = Phases()
    watch_phases(phases)
    stores = "PostgreSQL (the study) and an mlflow server on PostgreSQL" if args.servers else \
        "embedded (journal file, SQLite MLflow)"
    print(f"SIMULATED trials: {args.work:g}-s sleeps with {args.reports} synthetic reports each, in one Ray actor; "
          f"the driver is the real one. Stores: {stores}.", flush=True)
    print(f"{'trials':>7} {'conc':>5} {'wall_s':>8} {'effic':>6} {'occup':>6} {'gap first':>10} {'last':>7} "
          f"{'growth':>7} {'own_s':>6} {'drv CPU':>8} {'drv MiB':>8} {'mlflow/t':>9} {'study/t':>8}", flush=True)
    for c in args.concurrency:
        for n in args.trials:
            with kept_or_temporary(args.keep, f"{n}x{c}") as root, contextlib.ExitStack() as stack:
                study, tracking_uri = stack.enter_context(servers(Path(root))) if args.servers else (None, None)
                r = run(n, c, args.work, args.reports, tracking_uri, study, root, phases, args.profile)
            print(f"{n:>7} {c:>5} {r['wall_s']:>8.1f} {r['efficiency']:>6.3f} {r['occupancy']:>6.3f} "
                  f"{r['gap_first']:>10.3f} {r['gap_last']:>7.3f} {r['gap_last'] / max(r['gap_first'], 1e-9):>7.2f} "
                  f"{r['own']:>6.3f} {r['driver_cpu']:>8.2f} {r['driver_rss_mib']:>8.0f} {r['mlflow_per_trial']:>9.1f} "
                  f"{r['study_per_trial']:>8.1f}", flush=True)
            if args.phases:
                print(r["phases"], flush=True)


def real(args) -> None:
    print("REAL trials: toy2d, " + " ".join(REAL_OVERRIDES) + ", one worker each; embedded stores.", flush=True)
    print(f"{'trials':>7} {'conc':>5} {'wall_s':>8} {'complete':>9} {'span first':>11} {'last':>7} {'ratio':>6} "
          f"{'start-to-start first':>21} {'last':>7} {'ratio':>6} {'drv CPU':>8} {'drv MiB':>8}", flush=True)
    for c in args.concurrency:
        for n in args.trials:
            with kept_or_temporary(args.keep, f"real-{n}x{c}") as root:
                r = run_real(n, c, root)
            print(f"{n:>7} {c:>5} {r['wall_s']:>8.1f} {r['complete']:>9} {r['span_first']:>11.2f} "
                  f"{r['span_last']:>7.2f} {r['span_last'] / r['span_first']:>6.2f} {r['start_first']:>21.2f} "
                  f"{r['start_last']:>7.2f} {r['start_last'] / r['start_first']:>6.2f} {r['driver_cpu']:>8.2f} "
                  f"{r['driver_rss_mib']:>8.0f}", flush=True)


if __name__ == "__main__":
    main()
