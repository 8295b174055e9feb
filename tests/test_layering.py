"""The package's import graph: no cycles, and no module imports from a later stage of
the data flow (DESIGN.md: images -> proposals cache -> dataset dicts -> mapper ->
meta-arch -> loss -> trainer -> checkpoint -> converter -> transfer trainer ->
evaluator -> results table), plus the foundation every stage may use.

Read statically from the sources (every ``import``, also those inside functions).
Package ``__init__`` files only gather their modules and are not held to the
order; importing a package counts as importing its stage.  Weights file I/O
(safe reading, the checkpointer, loading with a report) sits with the trainer:
the trainer writes and resumes checkpoints, and every later stage reads weights
through it.  The transfer trainer, its evaluators and its results tables are one
stage: the trainer runs its evaluation and writes the table.  The representation
probes (features, classifiers) come before the trainer, which runs them during
pretraining (the probe hook); reading weights for a probe (the converter), probe
result files and plots come after it.
"""
import ast
import os

import pytest

PACKAGE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "soco_d2")
LINKED = {"tools", "configs"}  # setup.py links these into the package: not modules of the library

STAGES = [  # (stage, module prefixes), in data-flow order
    ("foundation", ["soco_d2.compat", "soco_d2.compat_audit", "soco_d2.config", "soco_d2.errors", "soco_d2.cli",
                    "soco_d2.cli_docs", "soco_d2.model_zoo"]),
    ("images", ["soco_d2.imageio", "soco_d2.data.datasets", "soco_d2.data.demo"]),
    ("proposals cache", ["soco_d2.proposals"]),
    ("dataset dicts and mappers", ["soco_d2.data"]),
    ("meta-arch and losses", ["soco_d2.modeling"]),
    ("representation probes", [f"soco_d2.evaluation.{m}" for m in (
        "backbone", "data", "distributed", "features", "knn", "linear", "metrics", "probe")]),
    ("trainer and checkpoints", [f"soco_d2.engine.{m}" for m in (
        "setup", "launch", "outputs", "checks", "norms", "solver", "hooks", "metrics", "steps", "resume", "probe_hook",
        "trainer",
        "pretrain")]
     + [f"soco_d2.checkpoint.{m}" for m in ("errors", "safe_load", "checkpointer", "loading")]),
    ("converter", ["soco_d2.checkpoint"]),
    ("transfer, evaluation and results", ["soco_d2.engine", "soco_d2.engine.transfer", "soco_d2.engine.evaluators",
                                          "soco_d2.engine.results", "soco_d2.engine.collect",
                                          "soco_d2.evaluation"]),
]


def modules() -> dict:
    """module name -> (path, is_package) of every module of soco_d2."""
    out = {}
    for root, dirs, files in os.walk(PACKAGE_DIR):
        dirs[:] = [d for d in dirs if d not in LINKED and not d.startswith("__")]
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(root, name), os.path.dirname(PACKAGE_DIR))[:-3]
                parts = rel.split(os.sep)
                is_package = parts[-1] == "__init__"
                out[".".join(parts[:-1] if is_package else parts)] = (os.path.join(root, name), is_package)
    return out


def imports_of(module: str, path: str, is_package: bool, known) -> set:
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] == "soco_d2" and n in known)
    found.discard(module)  # `python -m soco_d2.compat` imports the applied module: not a cycle
    return found


def stage_of(module: str) -> int:
    best, stage = -1, None
    for index, (_, prefixes) in enumerate(STAGES):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, stage = len(prefix), index
    return stage


@pytest.fixture(scope="module")
def graph():
    known = modules()
    return known, {m: imports_of(m, path, pkg, known) for m, (path, pkg) in known.items()}


def test_every_module_has_a_stage(graph):
    known, _ = graph
    assert [m for m in known if m != "soco_d2" and stage_of(m) is None] == []


def test_no_module_imports_from_a_later_stage(graph):
    known, edges = graph
    late = [f"{m} ({STAGES[stage_of(m)][0]}) imports {t} ({STAGES[stage_of(t)][0]})"
            for m, targets in edges.items() if not known[m][1]
            for t in targets if t != "soco_d2" and stage_of(t) > stage_of(m)]  # `import soco_d2`: the shims
    assert late == []


def test_no_import_cycles(graph):
    _, edges = graph
    state, cycles = {}, []

    def visit(node, path):
        state[node] = "open"
        for target in sorted(edges[node]):
            if state.get(target) == "open":
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[node] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    # package __init__ files import their own modules, which import the package's siblings:
    # only cycles between modules (not through a package's own __init__) are real
    real = [c for c in cycles if not any(known_is_parent(a, b) for a, b in zip(c, c[1:]))]
    assert real == []


def known_is_parent(a: str, b: str) -> bool:
    return b.startswith(a + ".") or a.startswith(b + ".")


def test_engine_modules_and_tools_stay_small():
    engine = os.path.join(PACKAGE_DIR, "engine")
    sizes = {name: sum(1 for _ in open(os.path.join(engine, name))) for name in os.listdir(engine) if name.endswith(".py")}
    assert {n: s for n, s in sizes.items() if s > 250} == {}
    tools = os.path.join(os.path.dirname(PACKAGE_DIR), "tools")
    sizes = {name: sum(1 for _ in open(os.path.join(tools, name))) for name in os.listdir(tools)
             if name.endswith(".py") and name != "install_detectron2.py"}  # the installer is not a soco_d2 tool
    assert sizes and {n: s for n, s in sizes.items() if s > 80} == {}
