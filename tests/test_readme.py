"""The README's code runs as written and its commands exist."""

import importlib.util
import re
from pathlib import Path

from aer import AERController

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, flags=re.MULTILINE | re.DOTALL)


def test_python_snippets_run_in_order():
    snippets = blocks("python")
    assert len(snippets) >= 4
    namespace: dict = {"__name__": "__readme__"}
    for snippet in snippets:
        exec(compile(snippet, "README.md", "exec"), namespace)
    controllers = [v for v in namespace.values() if isinstance(v, AERController)]
    assert any(c.step > 0 for c in controllers)  # the training-loop example really updated its controller


def test_commands_exist():
    makefile = (ROOT / "Makefile").read_text()
    commands = "\n".join(blocks("bash"))
    for target in re.findall(r"^make (?:\S+=\S+ )*([\w-]+)", commands, flags=re.MULTILINE):
        assert re.search(rf"^{re.escape(target)}:", makefile, flags=re.MULTILINE), f"make {target}"
    for module in re.findall(r"python -m (?!pytest)([\w.]+)", commands):
        assert importlib.util.find_spec(module) is not None, f"python -m {module}"
    for script in re.findall(r"bash (\S+\.sh)", commands):
        assert (ROOT / script).is_file(), script
