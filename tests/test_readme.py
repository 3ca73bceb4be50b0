"""The README's own-loop example runs as written and prunes LeNet-5 exactly."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from admmcompress import create_model

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "<!-- own-loop-example"

# The rules the example is expected to carry, and what they mean for LeNet-5.
EXPECTED_RULES = {"conv*": 0.2, "fc*": 0.05}
EXPECTED_NONZERO = {"conv1": 100, "conv2": 5000, "fc1": 20000, "fc2": 250}
WEIGHTS = {"conv1": 500, "conv2": 25000, "fc1": 400000, "fc2": 5000}


def own_loop_block() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.find(MARKER)
    assert start >= 0, f"README.md lost the marker line {MARKER!r}"
    m = re.compile(r"```python\n(.*?)```", re.S).search(text, start)
    assert m is not None, "no ```python block follows the own-loop-example marker"
    between = text[text.index("\n", start) : m.start()]
    assert between.strip() == "", "the python block must directly follow the marker line"
    return m.group(1)


def test_block_carries_the_expected_rules() -> None:
    code = own_loop_block()
    found = {
        sel: float(keep)
        for sel, keep in re.findall(r'"([^"]+)":\s*Irregular\(keep=([0-9.]+)\)', code)
    }
    assert found == EXPECTED_RULES, (
        f"the README own-loop example now has rules {found}; update EXPECTED_RULES and "
        f"EXPECTED_NONZERO in tests/test_readme.py to match"
    )
    for name, n in WEIGHTS.items():  # the hard-coded counts follow from the rules
        keep = EXPECTED_RULES["conv*" if name.startswith("conv") else "fc*"]
        assert EXPECTED_NONZERO[name] == round(keep * n)


def test_own_loop_example_runs_and_prunes_exactly() -> None:
    code = own_loop_block()
    torch.manual_seed(0)
    model = create_model("lenet5")
    g = torch.Generator().manual_seed(0)
    loader = [
        (torch.randn(16, 1, 28, 28, generator=g), torch.randint(10, (16,), generator=g))
        for _ in range(8)
    ]
    ns: dict = {"model": model, "loader": loader, "__name__": "readme_example"}
    exec(compile(code, str(README), "exec"), ns)

    assert ns["model"] is model
    masks = ns.get("masks")
    assert isinstance(masks, dict), "the example must leave the masks in `masks`"
    assert set(masks) == set(EXPECTED_NONZERO)
    modules = dict(model.named_modules())
    for name, expected in EXPECTED_NONZERO.items():
        w = modules[name].weight.detach()
        assert w.numel() == WEIGHTS[name]
        assert bool(torch.isfinite(w).all()), f"{name} has non-finite weights"
        mask = masks[name]
        assert mask.dtype == torch.bool and mask.shape == w.shape
        assert int(mask.sum()) == expected, f"{name}: mask keeps {int(mask.sum())}"
        assert int(torch.count_nonzero(w)) == expected, f"{name}: {int(torch.count_nonzero(w))}"
        assert torch.equal(w != 0, mask), f"{name}: zero pattern differs from the mask"
