"""The README's Python example and every ``vitprobe.`` name it mentions resolve against
the installed package: a renamed or unexported name fails here, not in a user's hands."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)
# dotted names not inside a path (src/vitprobe/...) or a file name (vitprobe-out)
DOTTED = sorted(set(re.findall(r"(?<![/\w-])vitprobe(?:\.[A-Za-z_]\w*)+", README)))


def resolve(dotted: str) -> object:
    """The object a dotted name refers to: the longest importable module, then
    attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ModuleNotFoundError(dotted)


def test_the_readme_has_a_python_example() -> None:
    assert PYTHON_BLOCKS and len(DOTTED) >= 10


@pytest.mark.parametrize("dotted", DOTTED)
def test_every_named_object_exists(dotted: str) -> None:
    resolve(dotted)


def test_python_example_compiles_and_its_imports_resolve() -> None:
    for block in PYTHON_BLOCKS:
        compile(block, "README.md", "exec")
        for module, names in re.findall(r"^\s*from (vitprobe[\w.]*) import ([^#\n]+)", block,
                                        flags=re.M):
            for name in (n.strip() for n in names.split(",")):
                assert hasattr(importlib.import_module(module), name), f"{module}.{name}"


def test_model_attributes_the_example_uses() -> None:
    from tests.models import zoo

    model = zoo.make("timm-vit")
    used = set()
    for block in PYTHON_BLOCKS:
        used |= set(re.findall(r"\bm\.([A-Za-z_]\w*)", block))
    assert {"W_Q", "run_with_cache", "stream"} <= used
    for name in sorted(used):
        assert hasattr(model, name), name
