"""The README section's code blocks run as written."""

import re
from pathlib import Path

from aer import AERController

DOC = Path(__file__).resolve().parents[1] / "docs" / "aer.md"


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.MULTILINE | re.DOTALL)


def test_aer_readme_examples_run():
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) >= 2
    namespace: dict = {"__name__": "__aer_readme__"}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)
    controllers = [v for v in namespace.values() if isinstance(v, AERController)]
    assert controllers and any(c.step > 0 for c in controllers)  # the training loop really updated one
