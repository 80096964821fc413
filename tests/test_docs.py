"""The reference pages follow the code: every config key has a documented default and meaning, every
command its help, and `docs/reference/generate.py --check` fails when a key or a command changes without them."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
generate = runpy.run_path(str(ROOT / "docs" / "reference" / "generate.py"))


def test_the_reference_pages_are_in_step_with_the_code(capsys):
    assert generate["main"](["--check"]) == 0, capsys.readouterr().out


def test_every_config_key_says_what_it_does():
    keys = generate["config_keys"]()
    assert len(keys) > 100
    assert [k for k, _, what in keys if not what] == []


def test_every_command_and_flag_is_on_the_commands_page():
    from orchestrator.commands import COMMANDS

    page = (ROOT / "docs" / "reference" / "cli.md").read_text()
    assert all(f"## imm-orch {name}" in page for name in COMMANDS)
    assert all(flag in page for flag in generate["cli_flags"]())


def test_the_check_fails_when_a_key_is_added_without_the_page(monkeypatch, capsys):
    real = generate["config_keys"]
    monkeypatch.setitem(generate["config_page"].__globals__, "config_keys",
                        lambda: [*real(), ("train.new_key", "1", "a key the page does not have")])
    assert generate["main"](["--check"]) == 1
    assert "config.md out of step" in capsys.readouterr().out


@pytest.mark.parametrize("page", ["config.md", "cli.md"])
def test_the_readme_links_the_reference(page):
    assert f"docs/reference/{page}" in (ROOT / "README.md").read_text()
