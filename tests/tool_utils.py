"""Load a tools/*.py script as a module, to call its ``cli(argv)`` in this process
(the same code the console entry points run, without a subprocess)."""
import importlib.util
import os

import soco_d2  # noqa: F401  (compat shims before detectron2)

TOOLS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")
_LOADED = {}


def load_tool(name: str):
    """``tools/<name>.py`` as a module (loaded once per test session)."""
    if name not in _LOADED:
        spec = importlib.util.spec_from_file_location(f"soco_d2_tool_{name}", os.path.join(TOOLS_DIR, f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _LOADED[name] = module
    return _LOADED[name]


def tool_path(name: str) -> str:
    return os.path.join(TOOLS_DIR, f"{name}.py")
