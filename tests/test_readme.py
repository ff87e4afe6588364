"""The README's code runs as written and its commands exist."""

import importlib
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


def test_trainer_snippets_name_what_exists():
    """The TRL and verl sections need a model download or a cluster to run: their imports, keyword arguments
    and the verl module and trainer mode they name are checked against the code instead."""
    import ast
    import inspect

    (trl_snippet,) = blocks("py")
    tree = ast.parse(trl_snippet)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{node.module}.{alias.name}"
    from aer import AERConfig
    from aer.integrations.trl import AERGRPOTrainer

    calls = {n.func.id: n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    trainer_kwargs = {k.arg for k in calls["AERGRPOTrainer"].keywords}
    assert trainer_kwargs - {"model", "reward_funcs", "train_dataset", "args"} <= set(
        inspect.signature(AERGRPOTrainer.__init__).parameters
    )
    assert {k.arg for k in calls["AERConfig"].keywords} <= {f.name for f in __import__("dataclasses").fields(AERConfig)}

    (verl_command,) = blocks("sh")
    module = re.search(r"VERL_USE_EXTERNAL_MODULES=([\w.]+)", verl_command).group(1)
    assert importlib.util.find_spec(module) is not None, module
    mode = re.search(r"trainer_mode=(\w+)", verl_command).group(1)
    assert mode in (ROOT / (module.replace(".", "/") + ".py")).read_text(), mode
    for field in re.findall(r"\+aer\.(\w+)=", verl_command):
        assert field in {f.name for f in __import__("dataclasses").fields(AERConfig)}, field
