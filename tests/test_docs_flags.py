"""The docs list every flag of every tool, and name no flag that no tool has.

Each ``docs/tools/<tool>.md`` page holds a table generated from the tool's parser
(``python -m soco_d2.cli_docs``); a flag added, renamed or re-described without
regenerating it fails here.
"""
import glob
import os
import re
import shutil

import pytest

from soco_d2.cli_docs import BEGIN, flags_block, main, stale_pages, tool_parsers

# Flags of other programs the README's recipes use (Slurm, torchrun, pip, venv).
EXTERNAL_FLAGS = {"--cpus-per-task", "--gpus-per-node", "--job-name", "--nodes", "--ntasks-per-node", "--time",
                  "--nnodes", "--no-build-isolation", "--no-deps", "--system-site-packages"}
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*(?!\w)")  # not torchrun's --nproc_per_node


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
