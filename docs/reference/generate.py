"""Write the reference pages that follow the code: every config key (`config.md`: its default and the comment
beside it in its dataclass) and every `imm-orch` command (`cli.md`: its help, from the command table).

    python docs/reference/generate.py           # rewrite them after changing a config dataclass or a command
    python docs/reference/generate.py --check   # exit 1 if they are out of step (tests/test_docs.py runs this)
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import io
import sys
import tokenize
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def field_comments(cls: type) -> dict[str, str]:
    """field -> the comment on its line, else the comment lines right above it, in the class's source."""
    lines, start = inspect.getsourcelines(cls)
    source = "".join(lines)
    comments: dict[int, str] = {}  # line (1-based, in the snippet) -> comment text
    code_lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
            code_lines.add(tok.start[0])
    found = {}
    names = {f.name for f in dataclasses.fields(cls)}
    for i, line in enumerate(lines, 1):
        name = line.strip().split(":", 1)[0]
        if name not in names or name in found:
            continue
        if i in comments:
            found[name] = comments[i]
            continue
        above, j = [], i - 1
        while j in comments and j not in code_lines:
            above.insert(0, comments[j])
            j -= 1
        found[name] = " ".join(above)
    return found


def sections() -> list[tuple[str, type, str]]:
    """(prefix, dataclass, where it is defined) of every config section, in the order a config file has them."""
    from imm import config
    from imm.methods import METHODS
    from imm.networks import ARCHITECTURES

    out = [("", config.RunConfig, "imm/config.py")]
    for f in dataclasses.fields(config.RunConfig):
        if dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
            out.append((f"{f.name}.", f.default_factory, "imm/config.py"))
    for arch in ARCHITECTURES.values():
        if arch.config:
            out.append((f"model.{arch.name}.", arch.config, _where(arch.config)))
    for method in METHODS.values():
        if method.section and method.config:
            out.append((f"{method.section}.", method.config, _where(method.config)))
    return out


def _where(cls: type) -> str:
    return str(Path(inspect.getsourcefile(cls)).resolve().relative_to(ROOT))


def config_keys() -> list[tuple[str, str, str]]:
    """(key, default, what) for every leaf key of the run config."""
    from omegaconf import OmegaConf

    from imm.config import run_schema

    schema = OmegaConf.to_container(run_schema(), resolve=False)
    rows = []
    for prefix, cls, _ in sections():
        comments = field_comments(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
                continue  # a section: its keys come with it
            key = prefix + f.name
            value = schema
            for part in key.split("."):
                value = value[part]
            rows.append((key, _show(value), comments.get(f.name, "")))
    return rows


def _show(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value).replace("|", "\\|")


def config_page() -> str:
    out = ["# Config keys", "",
           "Every key of the run config, its default, and what it does: generated from the config dataclasses by "
           "`python docs/reference/generate.py` (do not edit by hand). A config file sets any of them; the command "
           "line overrides them as `key=value`; the built-in configs (`imm/configs/`) change some defaults per data "
           "set. A wrong key or value stops before anything starts, naming the key and what is allowed.", ""]
    rows = config_keys()
    for prefix, cls, where in sections():
        keys = [r for r in rows if r[0].startswith(prefix) and r[0].count(".") == prefix.count(".")]
        if not keys:
            continue
        title = f"`{prefix[:-1]}`" if prefix else "Top level"
        out += [f"## {title}", "", f"From `{cls.__name__}` in [{where}](../../{where}).", "",
                "| key | default | what |", "|---|---|---|"]
        out += [f"| `{k}` | `{d}` | {w} |" for k, d, w in keys]
        out.append("")
    return "\n".join(out)


def cli_page() -> str:
    from orchestrator.cli import build_parser
    from orchestrator.commands import COMMANDS

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = ["# Commands", "",
           "Every `imm-orch` command with its options and examples, as `imm-orch COMMAND --help` prints them: "
           "generated from the command table (`orchestrator/commands/`) by `python docs/reference/generate.py` "
           "(do not edit by hand).", ""]
    out += [f"- [`imm-orch {name}`](#imm-orch-{name}): {c.help}" for name, c in COMMANDS.items()]
    for name in COMMANDS:
        help_text = sub.choices[name].format_help().replace("usage: imm-orch", "usage: imm-orch", 1)
        out += ["", f"## imm-orch {name}", "", "```", help_text.rstrip(), "```"]
    return "\n".join(out) + "\n"


PAGES = {"config.md": config_page, "cli.md": cli_page}


def in_step(name: str, written: str, generated: str) -> bool:
    """config.md must be as generated; cli.md must have every command and option (argparse's layout of a help text
    differs between Python versions, so its exact text is not compared)."""
    if name != "cli.md":
        return written == generated
    return all(line in written for line in generated.splitlines() if line.startswith(("## imm-orch", "- [`imm-orch"))) \
        and all(flag in written for flag in cli_flags())


def cli_flags() -> list[str]:
    from orchestrator.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sorted({s for p in sub.choices.values() for a in p._actions for s in a.option_strings})


def main(argv: list[str] | None = None) -> int:
    import os

    os.environ["COLUMNS"] = "120"  # argparse wraps help to the terminal: the page must not depend on it
    check = "--check" in (argv if argv is not None else sys.argv[1:])
    stale = []
    for name, page in PAGES.items():
        text, path = page(), HERE / name
        if check:
            if not path.is_file() or not in_step(name, path.read_text(), text):
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print(f"docs/reference/{', '.join(stale)} out of step with the code: run python docs/reference/generate.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
