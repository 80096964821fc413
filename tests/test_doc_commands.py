"""The commands the docs show are commands that run: every `imm-orch` line in a fenced block of the README and
docs/ parses with the CLI's own parser, and its key=value overrides resolve against the config it names. The
paper-scale table is the one benchmarks/reports/paper_scale.py computes."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from imm.config import load_config
from orchestrator.cli import parse_args

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BUILT_IN_CONFIGS = {p.stem for p in (ROOT / "imm" / "configs").glob("*.yaml")}


def commands(text: str) -> list[str]:
    """The `imm-orch ...` command lines in the text's fenced blocks, continuation lines joined, comments dropped."""
    found = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"^\s*(\.venv/bin/)?", "", line)
            if line.startswith("imm-orch "):
                found.append(re.split(r"\s+#", line)[0].strip())
    return found


def check(command: str) -> None:
    """Raises (SystemExit from argparse, ConfigError from the config) if `command` would be refused as written."""
    args = parse_args(shlex.split(command)[1:])
    config = getattr(args, "config", None) or getattr(args, "target", None)
    if config in BUILT_IN_CONFIGS:
        load_config(config, args.overrides)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_in_the_docs_parses(page):
    for command in commands(page.read_text()):
        try:
            check(command)
        except (SystemExit, Exception) as e:
            pytest.fail(f"{page.relative_to(ROOT)}: `{command}` is refused: {e}")


def test_the_check_catches_a_wrong_flag_and_a_wrong_key(capsys):
    with pytest.raises(SystemExit):
        check("imm-orch train cifar10 --workers 4")
    with pytest.raises(Exception, match="train.accumulate"):
        check("imm-orch train cifar10 trainer.num_workers=4 train.accumulate=3")
    capsys.readouterr()


def test_the_paper_scale_table_is_the_one_the_benchmark_computes():
    from benchmarks.reports import paper_scale

    page = (ROOT / "docs" / "paper-scale.md").read_text()
    quoted = re.search(r"<!-- paper_scale:.*?-->\n(.*?)\n<!-- /paper_scale -->", page, flags=re.S).group(1)
    assert quoted == paper_scale.table([paper_scale.measure(c) for c in paper_scale.CONFIGS]), \
        "docs/paper-scale.md's table is out of date: paste the output of python -m benchmarks.reports.paper_scale"
