"""Progressive runs: carried rules and masks, target allocation, and a tiny two-step run."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from admmcompress.constraints import (
    FixedSupport,
    PrunedQuantized,
    make_constraint,
    prunes,
    quantizer_of,
)
from admmcompress.formats import read_model_file
from admmcompress.models import create_model
from admmcompress.recipe.allocation import ScanPoint, allocate, keep_grid, sensitivity_scan
from admmcompress.recipe.planning import plan_step
from admmcompress.recipe.schema import ConfigError, RuleConfig, apply_override, validate_config
from admmcompress.run.checkpoint import load_checkpoint
from helpers import DATA_DIR, REPO, TWO_STEPS, assert_same_run, cli, kill_when, run

# ------------------------------------------------------------------------------ FixedSupport

shapes = st.tuples(st.integers(1, 5), st.integers(1, 6))


@settings(max_examples=60, deadline=None)
@given(shape=shapes, seed=st.integers(0, 10_000), k=st.integers(0, 30))
def test_fixed_support_irregular_is_exact(shape: tuple[int, int], seed: int, k: int) -> None:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    support = torch.rand(shape, generator=g) > 0.4
    c = FixedSupport(make_constraint("irregular", count=max(k, 1)), support)
    p = c.project(w)
    assert c.violation(p) is None
    assert torch.count_nonzero(p[~support]) == 0
    assert int(torch.count_nonzero(p)) <= min(max(k, 1), int(support.sum()))
    assert torch.equal(c.project(p), p)  # idempotent
    # optimal: the best feasible point keeps the largest |w| inside the support
    inside = (w.abs() * support).flatten().sort(descending=True).values
    best = (w**2).sum() - (inside[: max(k, 1)] ** 2).sum()
    assert torch.isclose(((w - p) ** 2).sum(), best, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=st.integers(0, 10_000), kind=st.sampled_from(["binary", "ternary"]))
def test_fixed_support_quantize_keeps_the_mask(
    shape: tuple[int, int], seed: int, kind: str
) -> None:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    support = torch.rand(shape, generator=g) > 0.5
    c = FixedSupport(make_constraint(kind), support)
    p = c.project(w)
    assert c.violation(p) is None
    assert torch.count_nonzero(p[~support]) == 0
    if kind == "binary" and support.any():
        assert torch.equal(p != 0, support)  # binary: every kept weight is +-a
    assert quantizer_of(c) is not None and prunes(c)


def test_fixed_support_names_revived_weights() -> None:
    support = torch.tensor([[True, False], [False, True]])
    c = FixedSupport(make_constraint("irregular", count=2), support)
    assert "pruned by an earlier step" in c.violation(torch.ones(2, 2))


def test_merge_rule_keeps_what_a_step_does_not_change() -> None:
    pruned = RuleConfig(prune="irregular", keep=0.1)
    quant = RuleConfig(quantize="ternary")
    both = quant.merged_over(pruned)
    assert both.prune == "irregular" and both.keep == 0.1 and both.quantize.kind == "ternary"
    again = RuleConfig(prune="irregular", count=7).merged_over(both)
    assert again.count == 7 and again.keep is None and again.quantize.kind == "ternary"
    assert isinstance(
        FixedSupport(
            PrunedQuantized(make_constraint("irregular", count=3), make_constraint("binary")),
            torch.ones(2, 3, dtype=torch.bool),
        ).inner,
        PrunedQuantized,
    )


# ------------------------------------------------------------------------------ allocation


def test_keep_grid_descends_to_the_floor() -> None:
    grid = keep_grid(1000, 8)
    assert grid[0] == 1000 and grid[-1] == 8
    assert all(b < a for a, b in itertools.pairwise(grid))


SIZES = {"a": 1000, "b": 100, "c": 10}


@pytest.mark.parametrize("method", ["uniform", "global_magnitude", "sensitivity"])
def test_allocation_meets_the_budget_within_floors_and_ceilings(method: str) -> None:
    g = torch.Generator().manual_seed(0)
    weights = {n: torch.randn(s, generator=g) * (i + 1) for i, (n, s) in enumerate(SIZES.items())}
    scan = {
        n: [ScanPoint(c, 1.0 + 50.0 / c * (i + 1), 0.5) for c in keep_grid(s, 2)]
        for i, (n, s) in enumerate(SIZES.items())
    }
    available = {"a": 600, "b": 100, "c": 10}
    counts = allocate(
        200, SIZES, method, min_count=5, available=available, weights=weights, scan=scan
    )
    assert sum(counts.values()) <= 200
    assert sum(counts.values()) >= 180  # uses the budget, up to rounding
    for n, c in counts.items():
        assert min(5, available[n]) <= c <= available[n]


def test_global_magnitude_keeps_the_largest_weights() -> None:
    weights = {"a": torch.tensor([5.0, 4.0, 0.1, 0.2]), "b": torch.tensor([3.0, 0.3, 0.01])}
    counts = allocate(3, {"a": 4, "b": 3}, "global_magnitude", min_count=1, weights=weights)
    assert counts == {"a": 2, "b": 1}


def test_uniform_uses_one_ratio() -> None:
    counts = allocate(111, SIZES, "uniform", min_count=1)
    assert counts["a"] == pytest.approx(100, abs=1) and counts["b"] == pytest.approx(10, abs=1)


def test_sensitivity_spares_the_fragile_layer() -> None:
    # "robust" loses nothing until 10 weights; "fragile" loses as soon as it is pruned.
    scan = {
        "robust": [ScanPoint(c, 1.0 if c >= 10 else 5.0, 0.9) for c in keep_grid(1000, 1)],
        "fragile": [ScanPoint(c, 1.0 + (1000 - c) / 100, 0.9) for c in keep_grid(1000, 1)],
    }
    counts = allocate(
        1000, {"robust": 1000, "fragile": 1000}, "sensitivity", min_count=1, scan=scan
    )
    assert counts["robust"] < 100 < counts["fragile"]


def test_allocation_refuses_a_budget_below_the_floors() -> None:
    with pytest.raises(ValueError, match="floor"):
        allocate(10, SIZES, "uniform", min_count=8)


def test_sensitivity_scan_restores_weights_and_respects_zeros() -> None:
    model = create_model("lenet300")
    fc3 = model.fc3.weight
    with torch.no_grad():
        fc3[:, ::2] = 0.0
    before = fc3.detach().clone()
    seen: list[int] = []

    def score() -> tuple[float, float]:
        seen.append(int(torch.count_nonzero(model.fc3.weight)))
        return 1.0, 0.5

    curves = sensitivity_scan(model, ["fc3"], score, min_count=8)
    assert torch.equal(model.fc3.weight, before)
    assert seen[0] == int(torch.count_nonzero(before))  # starts from the layer's non-zeros
    assert [p.count for p in curves["fc3"]] == seen and seen[-1] == 8


def test_plan_step_meets_the_target_over_all_pruned_layers() -> None:
    model = create_model("lenet5")
    cfg = validate_config(
        {
            "model": "lenet5",
            "steps": [
                {
                    "rules": {"fc2": {"prune": "irregular", "count": 100}},
                    "target": {"rate": 200, "allocation": "global_magnitude"},
                }
            ],
        }
    )
    plan = plan_step(model, cfg.step_list()[0], {}, {})
    total = sum(m.weight.numel() for m in (model.conv1, model.conv2, model.fc1, model.fc2))
    kept = sum(r.count for r in plan.rules.values())
    assert plan.rules["fc2"].count == 100
    assert total / kept >= 200 and total / (kept + 4) < 200
    bad = validate_config(
        {
            "model": "lenet5",
            "steps": [
                {
                    "rules": {"fc2": {"prune": "irregular", "count": 4000}},
                    "target": {"rate": 200},
                }
            ],
        }
    )
    with pytest.raises(ConfigError, match="already keep"):
        plan_step(model, bad.step_list()[0], {}, {})


# ------------------------------------------------------------------------------ config


def test_steps_take_top_level_defaults_key_by_key() -> None:
    raw = json.loads(json.dumps(TWO_STEPS))
    raw["steps"][1]["admm"] = {"optimizer": {"lr": 0.0005}}
    apply_override(raw, "steps.1.admm.rho=0.02")
    cfg = validate_config(raw)
    s1, s2 = cfg.step_list()
    assert s1.name == "step1" and s2.name == "squeeze"
    assert s1.admm.rho == 0.01 and s2.admm.rho == 0.02
    assert s2.admm.optimizer.name == "adam" and s2.admm.optimizer.lr == 0.0005
    assert s2.admm.epochs == 2 and s2.retrain.epochs == 1


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"rules": {"fc1": {"prune": "irregular", "keep": 0.1}}}, "inside each step"),
        ({"steps": []}, "'steps' is empty"),
        ({"steps": [{"admm": {"epochs": 3}}]}, "a step needs 'rules'"),
        ({"steps": [{"target": {"rate": 1}}]}, "rate must be above 1"),
        ({"steps": [{"target": {"rate": 10, "allocation": "magic"}}]}, "steps.0.target"),
    ],
)
def test_bad_steps_are_named(change: dict, needle: str) -> None:
    raw = {**json.loads(json.dumps(TWO_STEPS)), **change}
    with pytest.raises(ConfigError) as info:
        validate_config(raw)
    assert needle in str(info.value)


def test_set_names_a_bad_step_index() -> None:
    raw = json.loads(json.dumps(TWO_STEPS))
    with pytest.raises(ConfigError, match=r"index it with 0\.\.1"):
        apply_override(raw, "steps.2.admm.rho=0.1")


def test_unknown_layer_in_a_later_step_fails_before_training(tmp_path: Path) -> None:
    raw = json.loads(json.dumps(TWO_STEPS))
    raw["steps"][1]["rules"] = {"fc9": {"quantize": "binary"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    assert run(tmp_path / "c.yaml", tmp_path / "out") == 2
    assert not (tmp_path / "out" / "checkpoint.pt").exists()


# ------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def two_step_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("two")
    (tmp / "two.yaml").write_text(yaml.safe_dump(TWO_STEPS))
    assert run(tmp / "two.yaml", tmp / "run") == 0
    return tmp / "run"


def test_masks_only_shrink_between_steps(two_step_run: Path) -> None:
    first = read_model_file(two_step_run / "steps/step1.safetensors")
    second = read_model_file(two_step_run / "steps/squeeze.safetensors")
    final = read_model_file(two_step_run / "model.safetensors")
    w1 = dict(first.model.named_modules())
    w2 = dict(second.model.named_modules())
    for name, m2 in second.masks.items():
        m1 = first.masks[name]
        assert not (m2 & ~m1).any(), name  # nothing pruned in step 1 comes back
        n1 = int(torch.count_nonzero(w1[name].weight))
        n2 = int(torch.count_nonzero(w2[name].weight))
        assert n2 <= n1, name
        assert torch.equal(final.masks[name], m2)


def test_step_reports(two_step_run: Path) -> None:
    report = json.loads((two_step_run / "report.json").read_text())
    s1, s2 = report["steps"]
    assert (s1["name"], s2["name"]) == ("step1", "squeeze")
    assert s1["pruning_rate"] < s2["pruning_rate"]
    assert s2["pruning_rate"] >= 40.0
    assert report["pruning_rate"] == s2["pruning_rate"]
    assert s2["allocation"]["method"] == "sensitivity"
    counts = s2["allocation"]["counts"]
    assert s2["layers"]["conv2"]["nonzero"] <= counts["conv2"]
    assert s2["layers"]["fc1"]["nonzero"] <= counts["fc1"]
    # fc2: step 1's pruning kept, ternary added
    assert s2["layers"]["fc2"]["bits"] == 2
    assert s2["layers"]["fc2"]["nonzero"] <= s1["layers"]["fc2"]["nonzero"] == 500
    fc2 = load_file(str(two_step_run / "model.safetensors"))["fc2.weight"]
    assert torch.unique(fc2.abs()).numel() <= 2  # {0, a}
    assert {r["step"] for r in report["history"] if r["phase"] != "pretrain"} == {1, 2}
    md = (two_step_run / "report.md").read_text()
    assert "## Steps" in md and "squeeze" in md
    for name in ("steps.png", "sensitivity_squeeze.png"):
        assert (two_step_run / name).is_file(), name


@pytest.mark.slow
def test_resume_between_and_inside_steps(tmp_path: Path) -> None:
    """Kill at the end of step 1 and inside step 2: the result equals an uninterrupted run."""
    config = tmp_path / "two.yaml"
    config.write_text(yaml.safe_dump(TWO_STEPS))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ref = tmp_path / "reference"
    subprocess.run(cli("run", str(config), "--out", str(ref)), check=True, env=env)

    out = tmp_path / "killed"
    run_cmd = cli("run", str(config), "--out", str(out))
    kill_when(out, "step1 done", run_cmd)
    assert load_checkpoint(out / "checkpoint.pt")["step"] in (0, 1)
    kill_when(out, "squeeze admm 1/2", [*run_cmd, "--resume"])
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 1
    subprocess.run([*run_cmd, "--resume"], check=True, env=env)

    ra, rb = assert_same_run(ref, out)
    assert [s["pruning_rate"] for s in ra["steps"]] == [s["pruning_rate"] for s in rb["steps"]]
    assert DATA_DIR.is_dir()


def test_a_step_without_admm_is_magnitude_pruning(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = create_model("lenet5")
    torch.save(model.state_dict(), tmp_path / "init.pt")
    cfg = {
        "model": "lenet5",
        "init": str(tmp_path / "init.pt"),
        "data": {"train_subset": 200, "test_subset": 200},
        "runtime": {"progress": False},
        "steps": [
            {
                "rules": {"fc1": {"prune": "irregular", "count": 1000}},
                "admm": {"epochs": 0},
                "retrain": {"epochs": 0},
            }
        ],
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert run(tmp_path / "c.yaml", tmp_path / "out") == 0
    saved = load_file(str(tmp_path / "out" / "model.safetensors"))
    w = model.fc1.weight.detach()
    top = w.abs().flatten().topk(1000).indices
    expected = torch.zeros(w.numel())
    expected[top] = w.flatten()[top]
    assert torch.equal(saved["fc1.weight"], expected.view_as(w))
    assert torch.equal(saved["conv1.weight"], model.conv1.weight.detach())


def test_sensitivity_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from admmcompress.cli import main

    cfg = yaml.safe_load((REPO / "configs/tiny_test.yaml").read_text())
    cfg["runtime"] = {"progress": False}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "sens"
    args = ["sensitivity", str(tmp_path / "c.yaml"), "--out", str(out), "--data-dir", str(DATA_DIR)]
    assert main([*args, "--layers", "fc*", "--samples", "300", "--rate", "20"]) == 0
    result = json.loads((out / "sensitivity.json").read_text())
    assert set(result["scan"]) == {"fc1", "fc2"}
    for points in result["scan"].values():
        counts = [p["count"] for p in points]
        assert counts == sorted(counts, reverse=True) and counts[-1] == 8
    sizes = {"fc1": 400_000, "fc2": 5_000}
    for method in ("sensitivity", "global_magnitude", "uniform"):
        split = result["allocations"][method]
        assert sum(split.values()) <= sum(sizes.values()) / 20
    assert (out / "sensitivity.png").is_file()
    assert "fewest kept" in (out / "sensitivity.md").read_text()
    assert "fewest kept" in capsys.readouterr().out

    cfg["pretrain"]["epochs"] = 0
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main([*args, "--layers", "fc2"]) == 2
    assert "needs a trained model" in capsys.readouterr().err


def test_shift_is_a_crop_of_the_padded_image() -> None:
    from admmcompress.data.augment import augment_batch, random_shift

    x = torch.randn(16, 2, 9, 7)
    assert torch.equal(random_shift(x, 0, torch.Generator()), x)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a, b = random_shift(x, 2, g1), random_shift(x, 2, g2)
    assert torch.equal(a, b)  # the generator decides, nothing else
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="replicate")
    for i in range(16):  # each output is one of the 25 crops of its own padded image
        crops = [padded[i, :, r : r + 9, c : c + 7] for r in range(5) for c in range(5)]
        assert any(torch.equal(a[i], crop) for crop in crops)
    flipped = augment_batch(x, 0, True, torch.Generator().manual_seed(0))
    same = [torch.equal(flipped[i], x[i]) for i in range(16)]
    mirrored = [torch.equal(flipped[i], x[i].flip(-1)) for i in range(16)]
    assert all(s or m for s, m in zip(same, mirrored, strict=True)) and any(mirrored)


def test_black_padding_matches_torchvision_random_crop_on_raw_pixels() -> None:
    """pad: black on normalised CIFAR-style data = RandomCrop(padding=4) before normalising."""
    from admmcompress.data import Split
    from admmcompress.data.augment import random_shift
    from admmcompress.recipe.schema import AugmentConfig

    mean, std = torch.tensor([0.49, 0.48, 0.45]), torch.tensor([0.25, 0.24, 0.26])
    raw = torch.rand(8, 3, 6, 6)
    norm = (raw - mean[:, None, None]) / std[:, None, None]
    black = tuple((-mean / std).tolist())
    out = random_shift(norm, 2, torch.Generator().manual_seed(1), black)
    padded = torch.nn.functional.pad(raw, (2, 2, 2, 2))  # zeros: black pixels
    for i in range(8):
        crops = [padded[i, :, r : r + 6, c : c + 6] for r in range(5) for c in range(5)]
        want = [(c - mean[:, None, None]) / std[:, None, None] for c in crops]
        assert any(torch.allclose(out[i], w, atol=1e-6) for w in want)
    split = Split(norm, torch.zeros(8, dtype=torch.long), black)
    shift3 = AugmentConfig(shift=3, pad="black")
    x, _, n = next(split.train_batches(8, torch.Generator(), None, shift3))
    corners = x[:, :, [0, 0, -1, -1], [0, -1, 0, -1]]  # a 3-pixel shift always shows border
    assert n == 8 and any(torch.allclose(corners[i, :, 0], torch.tensor(black)) for i in range(8))


def test_init_from_a_pruned_model_keeps_its_masks(two_step_run: Path, tmp_path: Path) -> None:
    """Quantize a pruned model in a new run: its pruning carries over from the file's masks."""
    cfg = {
        "model": "lenet5",
        "init": str(two_step_run / "model.safetensors"),
        "data": {"train_subset": 500, "test_subset": 500},
        "runtime": {"progress": False, "threads": 1},
        "steps": [
            {
                "rules": {"conv*": {"quantize": 3}},  # fc layers: masks only, no rule
                "admm": {"epochs": 1, "period": 1},
                "retrain": {"epochs": 1},
            }
        ],
    }
    (tmp_path / "q.yaml").write_text(yaml.safe_dump(cfg))
    assert run(tmp_path / "q.yaml", tmp_path / "q") == 0
    before = read_model_file(two_step_run / "model.safetensors")
    after = read_model_file(tmp_path / "q" / "model.safetensors")
    weights = dict(after.model.named_modules())
    for name, mask in before.masks.items():
        assert not (after.masks[name] & ~mask).any(), name
        assert torch.count_nonzero(weights[name].weight[~mask]) == 0, name
    report = json.loads((tmp_path / "q" / "report.json").read_text())
    rows = {r["name"]: r for r in report["layers"]}
    assert rows["conv2"]["bits"] == 3 and rows["conv2"]["distinct_values"] <= 7
    assert "kept the pruning masks of 4 layers" in (tmp_path / "q" / "run.log").read_text()
