"""The "All flags" table at the end of every ``docs/tools/<tool>.md`` page, made
from the tool's own parser, so the docs list every flag with the help ``--help``
prints (``tests/test_docs_flags.py`` keeps them equal).

    python -m soco_d2.cli_docs            # rewrite the tables (after changing a flag)
    python -m soco_d2.cli_docs --check    # exit 1 and name the stale pages

A table, not the ``--help`` text: argparse's layout changes between Python
versions (3.13 prints ``-o, --option ARG``), the flags and help strings do not.
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import sys

BEGIN = "<!-- flags:begin (generated from the tool's parser by `python -m soco_d2.cli_docs`) -->"
END = "<!-- flags:end -->"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _flag(action: argparse.Action) -> str:
    metavar = action.metavar or (action.dest.upper() if action.nargs != 0 else None)
    if action.choices is not None and action.metavar is None:
        metavar = "{" + ",".join(map(str, action.choices)) + "}"
    if isinstance(metavar, tuple):
        metavar = " ".join(metavar)
    names = ", ".join(action.option_strings) or action.dest
    if not action.option_strings:
        return f"`{metavar or action.dest}`"
    return f"`{names} {metavar}`" if metavar and action.nargs != 0 else f"`{names}`"


def _help(action: argparse.Action, prog: str) -> str:
    text = (action.help or "") % dict(vars(action), prog=prog)  # what argparse expands in --help
    default = action.default
    shown = (action.nargs != 0 and default not in (None, "", [], argparse.SUPPRESS)
             and "default" not in text.lower())  # a switch's default is "off"; the help says what "on" does
    return _cell(text + (f" (default: {default})" if shown else ""))


def flags_block(parser: argparse.ArgumentParser) -> str:
    """The markdown block (markers included) listing every flag of ``parser`` but ``--help``."""
    rows = ["| flag | meaning |", "|---|---|"]
    for action in parser._actions:  # argparse keeps no public list of its actions
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        rows.append(f"| {_flag(action)} | {_help(action, parser.prog)} |")
    return "\n".join([BEGIN, *rows, END])


def with_block(page: str, block: str) -> str:
    """``page`` with its flag block replaced by ``block`` (appended under "## All flags" when absent)."""
    if BEGIN in page and END in page:
        head, rest = page.split(BEGIN, 1)
        return head + block + rest.split(END, 1)[1]
    return page.rstrip("\n") + "\n\n## All flags\n\n`--help` prints the same.\n\n" + block + "\n"


def tool_parsers(tools_dir: str) -> dict[str, argparse.ArgumentParser]:
    """``{tool name: build_parser()}`` for every ``tools/*.py`` that has one."""
    parsers = {}
    for path in sorted(glob.glob(os.path.join(tools_dir, "*.py"))):
        name = os.path.splitext(os.path.basename(path))[0]
        spec = importlib.util.spec_from_file_location(f"soco_d2_tool_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if hasattr(module, "build_parser"):
            parsers[name] = module.build_parser()
    return parsers


def stale_pages(docs_dir: str, tools_dir: str, write: bool) -> list[str]:
    """Pages whose flag block differs from their tool's parser (rewritten when ``write``)."""
    stale = []
    for name, parser in tool_parsers(tools_dir).items():
        path = os.path.join(docs_dir, f"{name}.md")
        with open(path, encoding="utf-8") as f:  # a tool without a page is an error
            page = f.read()
        updated = with_block(page, flags_block(parser))
        if updated != page:
            stale.append(path)
            if write:
                with open(path, "w", encoding="utf-8") as f:
                    f.write(updated)
    return stale


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m soco_d2.cli_docs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report stale pages (exit 1 when any)")
    parser.add_argument("--docs", default=os.path.join(REPO_ROOT, "docs", "tools"), help="the tool pages")
    parser.add_argument("--tools", default=os.path.join(REPO_ROOT, "tools"), help="the tools/*.py scripts")
    args = parser.parse_args(argv)
    stale = stale_pages(args.docs, args.tools, write=not args.check)
    for path in stale:
        print(f"{'stale' if args.check else 'updated'}: {path}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
