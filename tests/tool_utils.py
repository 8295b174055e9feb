"""Load a script of tools/ as a module, so tests call its main(argv) in this process."""
import importlib.util
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tool_path(name: str) -> str:
    return os.path.join(REPO, "tools", name)


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name.replace(".py", "") + "_tool", tool_path(name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
