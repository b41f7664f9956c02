"""The README's Python examples run as written, from the repository root
(those that import torch where torch is installed)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def readme_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert blocks, "README.md has no python example"
    return blocks


@pytest.mark.parametrize("block", readme_blocks())
def test_readme_example_runs(block: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if "import torch" in block:
        pytest.importorskip("torch")
    monkeypatch.chdir(ROOT)
    exec(compile(block, "README.md", "exec"), {})
