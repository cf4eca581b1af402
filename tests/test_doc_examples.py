"""Every Python example in the README and docs/ runs as written (each block in a fresh namespace)."""
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCKS = [(doc, i, code) for doc in DOCS
          for i, code in enumerate(re.findall(r"```python\n(.*?)```", doc.read_text(), re.S))]


@pytest.mark.parametrize("doc, index, code", BLOCKS,
                         ids=[f"{d.relative_to(ROOT)}[{i}]" for d, i, _ in BLOCKS])
def test_example_runs(doc, index, code, capsys):
    torch.manual_seed(0)
    exec(compile(code, f"{doc.relative_to(ROOT)}[{index}]", "exec"), {"__name__": "__doc_example__"})
