"""The shipped reference models in weights/: what their records say is what the files hold,
and the recipes that start from them with ``init:`` can load them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from admmcompress import create_model, load
from admmcompress.core.selection import compressible_targets
from admmcompress.formats import load_weights
from admmcompress.recipe.schema import load_config, validate_config
from helpers import CONFIGS, REPO

WEIGHTS = REPO / "weights"
RECORDS = sorted(WEIGHTS.glob("*.json"))


def test_there_is_a_reference_resnet20() -> None:
    assert (WEIGHTS / "resnet20_cifar10_dense.json") in RECORDS


@pytest.mark.parametrize("record", RECORDS, ids=lambda p: p.stem)
def test_a_shipped_model_is_the_file_its_record_describes(record: Path) -> None:
    info = json.loads(record.read_text())
    path = WEIGHTS / info["file"]
    data = path.read_bytes()
    assert len(data) == info["bytes"]
    assert hashlib.sha256(data).hexdigest() == info["sha256"]
    model = load(path)
    reference = create_model(info["model"], **info["model_args"])
    assert type(model) is type(reference)
    weights = sum(t.param.numel() for t in compressible_targets(model).values())
    assert weights == sum(t.param.numel() for t in compressible_targets(reference).values())
    assert all(
        torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point()
    )
    # the recipe in configs/ is still the one that made the file
    recipe = load_config(CONFIGS / f"{info['recipe']}.yaml").model_dump(mode="json")
    made_by = validate_config(info["config"]).model_dump(mode="json")
    for cfg in (recipe, made_by):  # where the data lay and progress bars do not matter
        cfg["data"].pop("root")
        cfg["runtime"].pop("progress")
    # precision auto is the precision the file was made in, on the machine that made it
    if recipe["runtime"]["precision"] == "auto":
        recipe["runtime"]["precision"] = info["precision"]
    assert made_by == recipe, f"configs/{info['recipe']}.yaml changed since {path.name} was made"


def test_the_reference_resnet20_is_as_good_as_he_et_al() -> None:
    info = json.loads((WEIGHTS / "resnet20_cifar10_dense.json").read_text())
    assert info["model"] == "resnet20_cifar" and info["dataset"] == "cifar10"
    assert info["test_accuracy"] >= 0.91  # the bar; He et al. 2016: 91.25%


SHIPPED = {json.loads(r.read_text())["file"] for r in RECORDS}


def _starts_from_a_shipped_model(path: Path) -> bool:
    """(``resnet50_imagenet_prune.yaml`` starts from torchvision's weights, which the user
    puts in weights/ and which are not shipped.)"""
    init = load_config(path).init
    return init is not None and Path(init).parent == Path("weights") and Path(init).name in SHIPPED


FROM_SHIPPED = sorted(p.name for p in CONFIGS.glob("*.yaml") if _starts_from_a_shipped_model(p))


def test_the_resnet20_recipes_start_from_the_reference_model() -> None:
    assert {
        f"resnet20_cifar10_{v}.yaml"
        for v in ("4bit", "ternary", "ternary_8bit_ends", "int8", "filter_2x", "filter_3x")
    } <= set(FROM_SHIPPED)


@pytest.mark.parametrize("recipe", FROM_SHIPPED)
def test_recipes_that_start_from_a_shipped_model_load_it(recipe: str) -> None:
    cfg = load_config(CONFIGS / recipe)
    path = REPO / cfg.init
    assert path.is_file(), f"{recipe} starts from {cfg.init}, which is not shipped"
    model = create_model(cfg.model.name, **cfg.model.args)
    masks = load_weights(model, path)  # what a run's init: does
    assert masks == {}  # a dense model: nothing is pruned before the recipe's own rules
    shipped = load(path).state_dict()
    assert all(torch.equal(v, shipped[k]) for k, v in model.state_dict().items())
