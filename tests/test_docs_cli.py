"""The docs list every flag of every tool, name no flag that no tool has, and every
tool command they show parses, with a config and overrides that merge.

Each ``docs/tools/<tool>.md`` page holds a table generated from the tool's parser
(``python -m soco_d2.cli_docs``); a flag added, renamed or re-described without
regenerating it fails here.
"""
import contextlib
import glob
import io
import os
import re
import shlex
import shutil
from importlib.metadata import entry_points

import pytest

from soco_d2.cli_docs import BEGIN, flags_block, main, stale_pages, tool_parsers
from soco_d2.engine.setup import cfg_from_args

# Flags of other programs the README's recipes use (Slurm, torchrun, pip, venv).
EXTERNAL_FLAGS = {"--cpus-per-task", "--gpus-per-node", "--job-name", "--nodes", "--ntasks-per-node", "--time",
                  "--nnodes", "--no-build-isolation", "--no-deps", "--system-site-packages"}
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*(?!\w)")  # not torchrun's --nproc_per_node
# soco-d2-pretrain -> pretrain_net, from the installed package's entry points (soco_d2.tools.<tool>:cli)
ENTRY_POINTS = {e.name: e.value.split(":")[0].rsplit(".", 1)[-1]
                for e in entry_points(group="console_scripts") if e.name.startswith("soco-d2-")}
COMMAND = re.compile(r"(?:^|\s)(?:tools/(\w+)\.py|(soco-d2-[\w-]+))(?:\s+(.*))?$")


def documented_commands(repo_root):
    """(page, tool, argv) of every tool command in a fenced block of the README, BENCHMARKS,
    the proposals README and docs/; lines with shell variables, <placeholders> or "..." are left out."""
    pages = ["README.md", "BENCHMARKS.md", os.path.join("proposals", "README.md"),
             *(os.path.relpath(p, repo_root) for p in glob.glob(os.path.join(repo_root, "docs", "**", "*.md"),
                                                                recursive=True))]
    for page in pages:
        with open(os.path.join(repo_root, page), encoding="utf-8") as f:
            blocks = re.findall(r"```[a-z]*\n(.*?)```", f.read(), re.S)
        for block in blocks:
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                match = COMMAND.search(line.split(" #")[0].strip())
                if not match or any(mark in line for mark in ("$", "<", "...")):
                    continue
                tool = match.group(1) or ENTRY_POINTS.get(match.group(2), match.group(2))
                yield page, tool, shlex.split(match.group(3) or "")


@pytest.fixture(scope="module")
def parsers(repo_root):
    return tool_parsers(os.path.join(repo_root, "tools"))


def test_every_tool_page_lists_the_flags_of_its_parser(repo_root, parsers):
    assert {"pretrain_net", "transfer_net", "precompute_proposals", "convert_to_d2", "probe_net"} <= set(parsers)
    stale = stale_pages(os.path.join(repo_root, "docs", "tools"), os.path.join(repo_root, "tools"), write=False)
    assert stale == [], "stale flag tables: run `python -m soco_d2.cli_docs`"
    for name, parser in parsers.items():
        with open(os.path.join(repo_root, "docs", "tools", f"{name}.md"), encoding="utf-8") as f:
            page = f.read()
        for action in parser._actions:
            for flag in action.option_strings:
                assert flag == "-h" or flag == "--help" or f"`{flag}" in page or f", {flag}" in page, (name, flag)


def test_docs_name_no_flag_that_no_tool_has(repo_root, parsers):
    known = {flag for parser in parsers.values() for action in parser._actions for flag in action.option_strings}
    pages = ["README.md", os.path.join("proposals", "README.md"),
             *glob.glob(os.path.join(repo_root, "docs", "**", "*.md"), recursive=True)]
    unknown = {}
    for page in pages:
        with open(os.path.join(repo_root, page), encoding="utf-8") as f:
            for flag in FLAG.findall(f.read()):
                if flag not in known and flag not in EXTERNAL_FLAGS:
                    unknown.setdefault(flag, set()).add(os.path.relpath(os.path.join(repo_root, page), repo_root))
    assert unknown == {}


def test_a_new_flag_makes_the_page_stale_until_regenerated(repo_root, tmp_path):
    tools, docs = tmp_path / "tools", tmp_path / "docs"
    tools.mkdir()
    docs.mkdir()
    shutil.copy(os.path.join(repo_root, "tools", "plot_metrics.py"), tools / "plot_metrics.py")
    shutil.copy(os.path.join(repo_root, "docs", "tools", "plot_metrics.md"), docs / "plot_metrics.md")
    assert main(["--check", "--docs", str(docs), "--tools", str(tools)]) == 0

    source = (tools / "plot_metrics.py").read_text()
    marker = "def build_parser():"
    assert marker in source
    source = source.replace(
        "\n    return parser\n",
        "\n    parser.add_argument('--dpi-scale', type=float, default=1.5, help='scale | of the figure')\n    return parser\n", 1)
    (tools / "plot_metrics.py").write_text(source)
    parser = tool_parsers(str(tools))["plot_metrics"]
    assert "--dpi-scale" in parser._option_string_actions
    assert main(["--check", "--docs", str(docs), "--tools", str(tools)]) == 1
    assert main(["--docs", str(docs), "--tools", str(tools)]) == 0  # rewrites the table
    page = (docs / "plot_metrics.md").read_text()
    assert "| `--dpi-scale DPI_SCALE` | scale \\| of the figure (default: 1.5) |" in page
    assert page.count(BEGIN) == 1 and flags_block(parser) in page
    assert main(["--check", "--docs", str(docs), "--tools", str(tools)]) == 0


def test_a_page_without_a_table_gets_one_appended(repo_root, parsers, tmp_path):
    block = flags_block(parsers["collect_results"])
    from soco_d2.cli_docs import with_block

    page = with_block("# a tool\n\nWhat it does.\n", block)
    assert page.startswith("# a tool\n\nWhat it does.\n\n## All flags\n")
    assert page.endswith(block + "\n") and with_block(page, block) == page


def test_every_documented_command_parses_and_its_config_merges(repo_root, parsers, monkeypatch):
    monkeypatch.chdir(repo_root)  # the commands name configs/... relative to the checkout
    broken, parsed, merged = [], 0, 0
    for page, tool, argv in documented_commands(repo_root):
        if tool not in parsers:
            broken.append((page, tool, "no such tool"))
            continue
        try:
            with contextlib.redirect_stderr(io.StringIO()) as err:
                args = parsers[tool].parse_args(argv)
        except SystemExit:
            broken.append((page, tool, " ".join(argv), err.getvalue().strip().splitlines()[-1]))
            continue
        parsed += 1
        if getattr(args, "config_file", ""):
            try:
                cfg_from_args(args)
                merged += 1
            except Exception as error:  # noqa: BLE001  (any failure is a broken example)
                broken.append((page, tool, " ".join(argv), str(error)[:200]))
    assert broken == []
    assert parsed >= 30 and merged >= 15, (parsed, merged)  # the scan did find the examples
    assert len(ENTRY_POINTS) >= 9 and set(ENTRY_POINTS.values()) <= set(parsers)
