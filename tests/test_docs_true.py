"""The docs say what the code, the sweep files and the results files say.

Each check is a function of a page's text that returns what it found wrong (empty: nothing), so that
`test_the_old_false_statements_are_caught` can feed it a sentence the docs once held and see it caught.
"""

from __future__ import annotations

import ast
import functools
import inspect
import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))
CONFIGS = sorted((ROOT / "imm" / "configs").glob("*.yaml"))
# The pages whose tables of scores must name their source (the steps study and what quotes it).
SCORED_PAGES = ["science/README.md", "methods.md", "digits/README.md"]


def page(name: str) -> str:
    return (DOCS / name).read_text()


def prose(text: str) -> str:
    """The text without code blocks, inline code and HTML comments."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def paragraphs(text: str) -> list[str]:
    """Prose paragraphs and list items; code blocks, tables and headings are left out."""
    out, cur, fence = [], [], False
    for line in [*text.splitlines(), ""]:
        if line.lstrip().startswith("```"):
            fence = not fence
        skip = fence or line.lstrip().startswith(("```", "|", "#")) or (line.startswith("    ") and not cur)
        if cur and (skip or not line.strip() or re.match(r"\s*([-*]|\d+\.) ", line)):  # the paragraph or item ends
            out.append(" ".join(cur))
            cur = []
        if not skip and line.strip():
            cur.append(line.strip())
    return out


def sentences(text: str) -> list[str]:
    """The prose's sentences, and every code or table line as one sentence of its own."""
    lines = [line for line in text.splitlines() if line.startswith(("    ", "|")) or "```" in line]
    code = re.findall(r"```.*?```", text, flags=re.S)
    lines += [line for block in code for line in block.splitlines()]
    return [s for p in paragraphs(text) for s in re.split(r"(?<=[.!?])\s+(?=[A-Z`])", p)] + lines


def header(sweep: Path) -> str:
    """A sweep file's leading comment, as text."""
    lines = []
    for line in sweep.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# "))
    return "\n".join(lines)


@functools.cache
def config_steps(name: str) -> int:
    cfg = yaml.safe_load((ROOT / "imm" / "configs" / f"{name}.yaml").read_text())
    return cfg.get("train", {}).get("steps") or config_steps(cfg["base"])


def trial_steps(sweep: str) -> int:
    spec = yaml.safe_load((ROOT / "sweeps" / f"{sweep}.yaml").read_text())
    set_here = [int(o.split("=")[1]) for o in spec["base"].get("overrides", []) if o.startswith("train.steps=")]
    return set_here[-1] if set_here else config_steps(spec["base"]["config"])


# ---- the checks: each returns what is wrong ----


def load_model_errors(text: str) -> list[str]:
    """Calls of `load_model(` in python blocks and inline code that `orchestrator.load_model` cannot bind."""
    import orchestrator

    signature = inspect.signature(orchestrator.load_model)
    snippets = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    snippets += [s for s in re.findall(r"`([^`\n]+)`", text) if "load_model(" in s]
    errors = []
    for code in snippets:
        calls = [n for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Call)
                 and getattr(n.func, "id", getattr(n.func, "attr", None)) == "load_model"]
        for call in calls:
            try:
                signature.bind(*call.args, **{k.arg: None for k in call.keywords if k.arg})
            except TypeError as e:
                errors.append(f"{ast.unparse(call)}: {e}")
    return errors


def sweep_block_mismatches(text: str) -> list[str]:
    """YAML blocks that name a sweep file (a `# sweeps/X.yaml` line, or `name: X`) and differ from it."""
    wrong = []
    for block in re.findall(r"```yaml\n(.*?)```", text, flags=re.S):
        data = yaml.safe_load(block)
        named = re.search(r"^# (sweeps/\w+\.yaml)", block, flags=re.M)
        path = ROOT / (named.group(1) if named else f"sweeps/{data.get('name')}.yaml")
        if path.is_file():
            real = yaml.safe_load(path.read_text())
            wrong += [f"{path.name}: {key}" for key in real.keys() | data.keys() if real.get(key) != data.get(key)]
    return wrong


def sweep_files_missing(text: str) -> set[str]:
    return {s.name for s in SWEEPS} - set(re.findall(r"\b\w+\.yaml\b", text))


def code_choices() -> dict[str, set]:
    from imm.config import choices
    from imm.methods import imm
    from imm.sampling import SCHEDULES, samplers_for

    own = {"imm.kernel": imm.KERNELS, "imm.mapping": imm.MAPPINGS, "imm.weighting": imm.WEIGHTINGS,
           "imm.estimator": imm.ESTIMATORS, "imm.time_sampler": imm.TIME_SAMPLERS, "imm.sampler": samplers_for("imm"),
           "imm.schedule": tuple(SCHEDULES)}
    return {k: set(v) - {None} for k, v in {**choices(), **own}.items()}


def choice_mismatches(text: str) -> list[str]:
    """Rows of the axes table (`key`, `key` | `a`, `b`; `c`) whose values differ from the code's choices."""
    choices, wrong = code_choices(), []
    for row in re.findall(r"^\|(.*)$", text, flags=re.M):
        cells = row.split("|")
        if len(cells) < 2:
            continue
        keys = re.findall(r"`([\w.]+)`", re.sub(r"\(.*?\)", "", cells[0]))
        groups = cells[1].split(";")
        for key, group in zip(keys, groups, strict=False):
            if len(keys) == len(groups) and key in choices and set(re.findall(r"`(\w+)`", group)) != choices[key]:
                wrong.append(f"{key}: {group.strip()} (the code: {sorted(choices[key])})")
    return wrong


def workers_default_errors(text: str) -> list[str]:
    """Sentences that give `resources.workers` a default other than the base config's `trainer.num_workers`."""
    return [s for s in sentences(text) if "resources.workers" in s and "default" in s and "trainer.num_workers" not in s]


def demo_trial_counts(text: str) -> set[int]:
    """Trial counts said of the demo sweep (a sentence naming toy2d_smoke and 'N trials' or 'N-trial')."""
    return {int(n) for s in sentences(text) if "toy2d_smoke" in s for n in re.findall(r"\b(\d+)[- ]trials?\b", s)}


def listed_configs(text: str) -> set[str] | None:
    """The built-in configs a page lists: the table after 'Built-in configs', else that paragraph's names."""
    at = text.find("Built-in configs")
    if at < 0:
        return None
    rest = text[at:]
    table = re.match(r"[^\n]*\n(?:[^\n|][^\n]*\n)*?\n((?:\|.*\n)+)", rest)
    if table:
        return {m for m in re.findall(r"^\| `(\w+)` \|", table.group(1), flags=re.M)}
    return {w for w in re.findall(r"`(\w+)`", rest.split("\n\n")[0])}


def results(key: str) -> dict[int, tuple[float, float]]:
    """{sampling steps: (mean, max - min) over seeds} for 'FILE SET METHOD[ABLATION] STEPS [SAMPLER/GRID]'."""
    path, data_set, method, budget, *sampler = key.split()
    method, _, ablation = method.rstrip("]").partition("[")
    runs = []
    for r in json.loads((DOCS / path).read_text()):
        job = r.get("job", r)
        if (job["set"], job["method"], job.get("ablation", ""), job.get("steps", job.get("train_steps"))) == (
                data_set, method, ablation, int(budget)):
            runs.append(dict(zip(job["sample_steps"], r["energy"][sampler[0]] if sampler else r["energy"],
                                 strict=True)))
    return {k: (sum(r[k] for r in runs) / len(runs), max(r[k] for r in runs) - min(r[k] for r in runs))
            for k in runs[0]} if runs else {}


def cells(row: str) -> list[str]:
    return [c.strip() for c in row.strip().strip("|").split("|")]


def marked_tables(text: str) -> list[tuple[list[str], list[int], list[list[str]]]]:
    """(row keys, step columns, rows) of every table under a `<!-- rows: KEY | KEY ... -->` comment."""
    out = []
    for keys, table in re.findall(r"<!-- rows: (.*?) -->\n((?:\|.*\n?)+)", text):
        lines = table.strip().splitlines()
        steps = [int(m.group(1)) for c in cells(lines[0]) if (m := re.fullmatch(r"(\d+) steps?", c))]
        out.append(([k.strip() for k in keys.split("|")], steps, [cells(line) for line in lines[2:]]))
    return out


def quoted_score_mismatches(text: str) -> list[str]:
    """Cells of marked tables whose 'mean' or 'mean ± spread' differs from the results file, at the digits shown."""
    wrong = []
    for keys, steps, rows in marked_tables(text):
        if len(keys) != len(rows):
            wrong.append(f"{len(keys)} keys for {len(rows)} rows")
        for key, row in zip(keys, rows, strict=False):
            scores = results(key)
            for k, cell in zip(steps, row[-len(steps):], strict=True):
                for quoted, true in zip(re.findall(r"-?\d+\.\d+", cell), scores.get(k, ()), strict=False):
                    if abs(float(quoted) - true) > 0.5 * 10 ** -len(quoted.split(".")[1]) + 1e-12:
                        wrong.append(f"{key} at {k} steps: {quoted}, the file {true:.5f}")
                if cell and k not in scores:
                    wrong.append(f"{key} at {k} steps: {cell}, the file has no such score")
    return wrong


def shipped_label_errors(text: str) -> list[str]:
    """Marked rows labelled 'shipped CONFIG' whose sampler/grid is not the one CONFIG ships."""
    wrong = []
    for keys, _, rows in marked_tables(text):
        for key, row in zip(keys, rows, strict=False):
            for name in re.findall(r"shipped `?(\w+)", row[0]):
                cfg = yaml.safe_load((ROOT / "imm" / "configs" / f"{name}.yaml").read_text())["imm"]
                if key.split()[4:] != [f"{cfg.get('sampler', 'pushforward')}/{cfg.get('schedule', 'uniform')}"]:
                    wrong.append(f"{row[0]}: {key}")
    return wrong


def unsourced_score_tables(text: str) -> list[str]:
    """Tables with step columns ('1 step | 2 steps') without a `<!-- rows: -->` or `<!-- source: -->` comment."""
    found = re.findall(r"(?:^|\n)([^\n]*)\n(\|[^\n]*\| 2 steps \|[^\n]*)", text)
    return [head for before, head in found if not re.match(r"<!-- (rows|source): ", before)]


def wall_time_mismatches(text: str) -> list[str]:
    """Wall times on a line that names sweeps/X.yaml which X.yaml's header does not state."""
    def times(s):
        return {(int(n), "min" if u.startswith("m") else "s")
                for n, u in re.findall(r"(?<![\d.])(\d+)\s*(s|min|minutes?)\b", s)}
    wrong = []
    for line in text.splitlines():
        for name in re.findall(r"sweeps/(\w+)\.yaml", line):
            wrong += [f"{name}: {n} {u}" for n, u in times(line) - times(header(ROOT / "sweeps" / f"{name}.yaml"))]
    return wrong


def config_budget_errors(text: str) -> list[str]:
    """Sentences naming a built-in config's file and a training budget that leave out the file's own."""
    wrong = []
    for s in sentences(text):
        for name in re.findall(r"\b(\w+)\.yaml\b", s):
            budgets = {int(n) for n in re.findall(r"\b(\d{3,}) (?:training )?steps\b", s) if int(n) >= 500}
            if (ROOT / "imm" / "configs" / f"{name}.yaml").is_file() and budgets and config_steps(name) not in budgets:
                wrong.append(s)
    return wrong


def best_of_errors(text: str) -> list[str]:
    """`--best-of SWEEP train.steps=N` examples that say 'longer' or 'twice' of no more steps than the trials'."""
    wrong = []
    for line in text.splitlines():
        m = re.search(r"--best-of sweeps/(\w+)\.yaml.*train\.steps=(\d+)", line)
        if m and re.search(r"longer|twice|more steps", line) and int(m.group(2)) <= trial_steps(m.group(1)):
            wrong.append(line.strip())
    return wrong


def bench_scripts(text: str) -> set[str]:
    """The scripts under benchmarks/ a text names, as their paths there without .py: `benchmarks/speed/step_cost.py`
    and `python -m benchmarks.speed.step_cost` are both speed/step_cost."""
    paths = re.findall(r"\bbenchmarks/([\w/]+)\.py\b", text)
    modules = [m.replace(".", "/") for m in re.findall(r"(?<![\w/])benchmarks\.(\w+(?:\.\w+)*)", text) if m != "md"]
    return set(paths) | set(modules)


def bench_claim(text: str) -> set[str]:
    """The scripts the sentence about `make bench` names."""
    said = next((s for s in sentences(text) if "`make bench`" in s), "")
    named = bench_scripts(said)
    return named or ({"*"} if re.search(r"runs `benchmarks/`", said) else set())


def makefile_bench() -> set[str]:
    recipe = re.search(r"^bench:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), flags=re.M).group(1)
    return bench_scripts(recipe)


def benchmarks_missing(text: str) -> set[str]:
    """The scripts under benchmarks/, in every folder, whose file name the text does not mention."""
    scripts = {p.name for p in (ROOT / "benchmarks").rglob("*.py") if p.name != "__init__.py"}
    return scripts - set(re.findall(r"\b\w+\.py\b", text))


def dangling_above(text: str) -> bool:
    """'above' before a page's first section: nothing is above it."""
    return " above" in prose(text.split("\n## ")[0])


def postgres_users(text: str) -> set[str]:
    return set(re.findall(r"postgresql://(\w+)@", text)) - {"user"}


def compose_postgres_user() -> str:
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    return compose["services"]["postgres"]["environment"]["POSTGRES_USER"]


BANNED = ["trust_pickle", "optuna@db", "seed 00", "pip install 'imm-orch", "pip install imm-orch"]


def banned_phrases(text: str) -> list[str]:
    """Names the code lacks, notes the repository lacks, and bare issue numbers (kept only in HTML comments)."""
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    return [b for b in BANNED if b in text] + re.findall(r"\bissues? #?\d+", text, flags=re.I)


def first_person(text: str) -> list[str]:
    words = re.findall(r"\b(?:we|our|ours|us|ourselves)\b", prose(text), flags=re.I)
    return words + re.findall(r"(?<!\^2 )\bI (?=[a-z])", prose(text))


def long_paragraphs(text: str, limit: int = 150) -> list[str]:
    return [p[:80] for p in paragraphs(re.sub(r"<!--.*?-->", "", text, flags=re.S)) if len(p.split()) > limit]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def broken_anchors(text: str, where: Path) -> list[str]:
    """Links `file.md#anchor` whose file has no such heading."""
    wrong = []
    for target, anchor in re.findall(r"\]\(([\w./-]+\.md)#([\w-]+)\)", text):
        headings = re.findall(r"^#+ (.*)$", (where.parent / target).read_text(), flags=re.M)
        if anchor not in {slug(h) for h in headings}:
            wrong.append(f"{target}#{anchor}")
    return wrong


# ---- the docs as they are ----


def test_load_model_examples_bind_to_the_real_signature():
    assert [e for p in PAGES for e in load_model_errors(p.read_text())] == []


def test_sweep_examples_equal_their_files():
    assert [m for p in PAGES for m in sweep_block_mismatches(p.read_text())] == []
    assert "```yaml\n# sweeps/toy2d_smoke.yaml" in page("sweeps.md")


def test_every_sweep_file_is_listed():
    assert sweep_files_missing(page("sweeps.md")) == set()


def test_the_axes_table_lists_the_codes_choices():
    assert choice_mismatches(page("sweeps.md")) == []
    assert "`half_eta`" in page("sweeps.md")


def test_resources_workers_default_is_the_base_configs():
    from orchestrator.sweep.spec import ResourcesSpec

    assert ResourcesSpec().workers is None  # the spec's default: the base config's trainer.num_workers
    assert [s for p in PAGES for s in workers_default_errors(p.read_text())] == []


def test_the_demo_sweeps_trial_count():
    trials = yaml.safe_load((ROOT / "sweeps" / "toy2d_smoke.yaml").read_text())["trials"]
    assert {p.name: demo_trial_counts(p.read_text()) - {trials} for p in PAGES} == {p.name: set() for p in PAGES}
    assert demo_trial_counts(page("storage.md")) == {trials}


def test_the_built_in_config_list_is_imm_configs():
    listed = {p.name: listed_configs(p.read_text()) for p in PAGES if listed_configs(p.read_text()) is not None}
    assert "running.md" in listed
    assert listed == {name: {c.stem for c in CONFIGS} for name in listed}


@pytest.mark.parametrize("name", SCORED_PAGES)
def test_quoted_scores_equal_the_results_files(name):
    text = page(name)
    assert marked_tables(text), f"{name}: no table names its results file"
    assert unsourced_score_tables(text) == []
    assert quoted_score_mismatches(text) == []
    assert shipped_label_errors(text) == []


def test_sweep_wall_times_agree_with_the_sweep_headers():
    assert [w for p in PAGES for w in wall_time_mismatches(p.read_text())] == []


def test_config_budgets_are_the_config_files():
    texts = [p.read_text() for p in PAGES] + [header(s) for s in SWEEPS]
    assert [s for t in texts for s in config_budget_errors(t)] == []


def test_best_of_examples_train_longer_than_the_trials():
    from orchestrator.commands.train import EXAMPLES

    assert [e for t in [EXAMPLES, *(p.read_text() for p in PAGES)] for e in best_of_errors(t)] == []


def test_the_benchmarks_page_says_what_make_bench_runs():
    text = page("benchmarks.md")
    assert bench_claim(text) == makefile_bench()
    assert benchmarks_missing(text) == set()
    assert not dangling_above(text)


def test_postgres_urls_use_the_compose_user():
    assert {u for p in PAGES for u in postgres_users(p.read_text())} <= {compose_postgres_user()}


@pytest.mark.parametrize("path", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_page_style(path):
    text = path.read_text()
    assert banned_phrases(text) == []
    assert first_person(text) == []
    assert long_paragraphs(text) == []
    assert not dangling_above(text)
    assert broken_anchors(text, path) == []


# ---- each false statement the docs once held is caught ----

OLD = [
    (load_model_errors, "loads only with `--trust-pickle` (or `load_model(..., trust_pickle=True)`)."),
    (sweep_block_mismatches, "```yaml\nname: toy2d_smoke\nbase: {config: toy2d, overrides: [train.steps=600, "
                             "eval.every=200]}\npruner: {name: asha, min_resource: 200}\ntrials: 8\n```\n"),
    (sweep_files_missing, "`sweeps/` has the toy smoke sweep and ablation, the digits M-and-kernel ablation, the "
                          "baselines, and the paper's CIFAR-10 ablation (for a GPU cluster)."),
    (choice_mismatches, "| `imm.sampler`, `imm.schedule` | `pushforward`, `restart`; `uniform`, `eta` | how IMM samples |"),
    (workers_default_errors, "A trial of one worker (`resources.workers: 1`, the default) trains in that task."),
    (lambda t: demo_trial_counts(t) - {8}, "(MLflow adds a small webp preview of each). For a 4-trial\n"
                                          "`toy2d_smoke` sweep, Ray checkpoints and MLflow artifacts come to 5.8 MB."),
    (lambda t: listed_configs(t) != {c.stem for c in CONFIGS},
     "Built-in configs: `toy2d` (8 Gaussians), `digits`, `cifar10` (the paper's CIFAR-10 setting), and "
     "`toy2d_paper`, `digits_paper`; or a YAML file of your own.\n\nMore."),
    (unsourced_score_tables, "restart contracts it:\n\n| 3000 training steps, 3 seeds | 1 step | 2 steps | 4 steps |\n"
                             "|---|---|---|---|\n| 8gaussians, restart (shipped toy2d) | 0.0089 | 0.0008 | 0.0001 |\n"),
    (shipped_label_errors, "<!-- rows: results/steps_study/results.json 8gaussians imm 3000 restart/uniform -->\n"
                           "| 3000 training steps, 3 seeds | 1 step | 2 steps |\n|---|---|---|\n"
                           "| 8gaussians, restart (shipped toy2d) | 0.0089 | 0.0008 |\n"),
    (quoted_score_mismatches, "<!-- rows: results/steps_study/targets.json digits imm 8000 -->\n"
                              "| digits | 1 step | 2 steps | 4 steps | 8 steps |\n|---|---|---|---|---|\n"
                              "| IMM (3000 steps: current?) | 0.058 | 0.0061 | 0.0056 | 0.0073 |\n"),
    (config_budget_errors, "Every method trains with `imm/configs/digits.yaml`: the same 3-layer, 256-wide MLP on the "
                           "64 pixels, batch 256,\n3000 steps, Adam at 1e-3, EMA 0.998, three seeds (0, 1, 2)."),
    (wall_time_mismatches, "    .venv/bin/imm-orch sweep sweeps/flow_maps.yaml              # 18 trials from scratch, "
                           "1480 s on 2 cores"),
    (best_of_errors, "  imm-orch train --best-of sweeps/toy2d_smoke.yaml train.steps=3000   # a sweep's winner, "
                     "trained longer"),
    (lambda t: bench_claim(t) != makefile_bench(), "`make bench` runs `benchmarks/`: each prints a ratio against a "
                                                   "baseline measured in the same run."),
    (dangling_above, "# Benchmarks\n\n`benchmarks/steps_study.py` is the steps study above.\n"),
    (lambda t: postgres_users(t) - {compose_postgres_user()},
     "  imm-orch status my_sweep --storage postgresql://optuna@db/optuna"),
    (banned_phrases, "install the `postgres` extra (or `pip install 'imm-orch[postgres]'`)"),
    (banned_phrases, "## 2. The DDIM interpolant (seed 003; paper eq. 11)"),
    (banned_phrases, "## MeanFlow: what was wrong (issue 29)"),
    (first_person, "The paper's IMM improves from 1 to 8 sampling steps. Ours, with the paper's sampler, did not."),
    (first_person, "which I looked at once before moving `crescent_blobs`"),
    (long_paragraphs, "How it runs: " + "the driver asks the study for a trial, " * 30),
    (lambda t: broken_anchors(t, DOCS / "methods.md"),
     "([section 10](method.md#10-baselines-from-the-seeds-same-trainer-same-metrics))"),
    (lambda t: bench_claim(t) != makefile_bench(), "`make bench` runs two of them: `python -m "
                                                   "benchmarks.speed.step_cost` and `benchmarks/speed/sweep_overhead.py`."),
]


@pytest.mark.parametrize(("check", "old"), OLD, ids=[f"{i}-{c.__name__}" for i, (c, _) in enumerate(OLD)])
def test_the_old_false_statements_are_caught(check, old):
    assert check(old)
