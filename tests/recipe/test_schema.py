"""Config validation: every bad config fails with a message naming the key and what is allowed."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from admmcompress.core.selection import SelectionError
from admmcompress.models import create_model
from admmcompress.recipe.planning import check_step_selectors, layer_constraints, plan_step
from admmcompress.recipe.schema import ConfigError, RunConfig, load_config, validate_config
from helpers import CONFIGS

RECIPES = sorted(CONFIGS.rglob("*.yaml"))  # configs/gpu/ too
TINY = CONFIGS / "tiny_test.yaml"
LENET5_LAYERS = "conv1, conv2, fc1, fc2"


def make(**sections: Any) -> dict[str, Any]:
    """A minimal valid raw config, with ``sections`` replacing or adding top-level keys."""
    raw: dict[str, Any] = {
        "model": "lenet5",
        "rules": {"conv1": {"prune": "irregular", "keep": 0.2}},
    }
    raw.update(sections)
    return raw


def rule(**fields: Any) -> dict[str, Any]:
    return {"rules": {"conv1": fields}}


def error_of(raw: Any) -> str:
    with pytest.raises(ConfigError) as info:
        validate_config(raw)
    return str(info.value)


def write(tmp_path: Path, raw: Any, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# --------------------------------------------------------------------------- valid configs


def test_minimal_config_is_valid() -> None:
    cfg = validate_config(make())
    assert isinstance(cfg, RunConfig)
    assert cfg.model.name == "lenet5"
    assert cfg.rules["conv1"].keep == 0.2


def test_model_shorthand_equals_mapping() -> None:
    short = validate_config(make(model="lenet5"))
    full = validate_config(make(model={"name": "lenet5"}))
    assert short.model == full.model
    assert short.model.name == "lenet5"


def test_keep_exactly_one_is_valid() -> None:
    cfg = validate_config(make(**rule(prune="irregular", keep=1)))
    assert cfg.rules["conv1"].keep == 1.0


def test_count_instead_of_keep_is_valid() -> None:
    cfg = validate_config(make(**rule(prune="filter", count=5)))
    assert cfg.rules["conv1"].count == 5
    assert cfg.rules["conv1"].prune_params() == {"keep": None, "count": 5}


# --------------------------------------------------------------------------- unknown keys


def test_unknown_top_level_key() -> None:
    msg = error_of(make(modle="lenet5"))
    assert "modle" in msg
    assert "unknown key" in msg
    for allowed in ("model", "rules", "admm", "data"):
        assert allowed in msg.split("modle", 1)[1]


def test_unknown_nested_key() -> None:
    msg = error_of(make(admm={"rhoo": 1}))
    assert "admm.rhoo" in msg
    assert "unknown key" in msg
    assert "rho" in msg.split("admm.rhoo", 1)[1]


def test_unknown_key_inside_rule() -> None:
    msg = error_of(make(**rule(prune="irregular", keep=0.2, kep=1)))
    assert "rules.conv1.kep" in msg
    assert "unknown parameter 'kep'" in msg
    allowed = msg.split("rules.conv1.kep", 1)[1]  # the kind says what it takes
    assert "irregular takes keep" in allowed and "count" in allowed


# --------------------------------------------------------------------------- rule values


@pytest.mark.parametrize("keep", [0, -0.1, 1.5])
def test_keep_outside_unit_interval(keep: float) -> None:
    msg = error_of(make(**rule(prune="irregular", keep=keep)))
    assert "rules.conv1.keep" in msg
    assert "(0, 1]" in msg


@pytest.mark.parametrize(
    "fields",
    [
        {"prune": "irregular", "keep": 0.5, "count": 3},
        {"prune": "irregular"},
    ],
    ids=["both", "neither"],
)
def test_keep_and_count_exactly_one(fields: dict[str, Any]) -> None:
    msg = error_of(make(**rule(**fields)))
    assert "rules.conv1" in msg
    assert "exactly one" in msg
    assert "keep" in msg and "count" in msg


def test_count_must_be_positive() -> None:
    msg = error_of(make(**rule(prune="irregular", count=0)))
    assert "rules.conv1.count" in msg


def test_unknown_prune_kind() -> None:
    msg = error_of(make(**rule(prune="blocky", keep=0.5)))
    assert "rules.conv1.prune" in msg
    assert "blocky" in msg
    for kind in ("irregular", "filter", "channel", "column"):
        assert kind in msg


def test_rule_keep_without_prune() -> None:
    msg = error_of(make(**rule(keep=0.5)))
    assert "rules.conv1.prune" in msg
    assert "'keep' needs 'prune'" in msg


def test_rule_with_neither_prune_nor_quantize() -> None:
    msg = error_of(make(rules={"conv1": {}}))
    assert "rules.conv1" in msg
    assert "'prune'" in msg and "'quantize'" in msg


def test_empty_rule_message_shows_rule_shape() -> None:
    msg = error_of(make(rules={"conv1": None}))
    assert "rules.conv1" in msg
    assert "RuleConfig" not in msg
    assert "prune" in msg


# --------------------------------------------------------------------------- wrong types


@pytest.mark.parametrize(
    ("sections", "key"),
    [
        ({"admm": {"epochs": "ten"}}, "admm.epochs"),
        ({"data": {"batch_size": 0}}, "data.batch_size"),
        ({"seed": "x"}, "seed"),
        ({"rules": []}, "rules"),
        ({"rules": {}}, "rules"),
        ({"admm": {"rho": -1}}, "admm.rho"),
        ({"admm": [1]}, "admm"),
    ],
    ids=[
        "epochs-str",
        "batch-size-0",
        "seed-str",
        "rules-list",
        "rules-empty",
        "rho-neg",
        "admm-list",
    ],
)
def test_wrong_types_name_the_key(sections: dict[str, Any], key: str) -> None:
    msg = error_of(make(**sections))
    assert f"  - {key}:" in msg


def test_wrong_type_shows_the_bad_value() -> None:
    msg = error_of(make(admm={"epochs": "ten"}))
    assert "'ten'" in msg
    assert "integer" in msg


def test_empty_rules_says_a_rule_is_needed() -> None:
    msg = error_of(make(rules={}))
    assert "at least one" in msg
    assert "prune" in msg  # shows an example rule


# --------------------------------------------------------------------------- model


@pytest.mark.parametrize("model", ["resnet", {"name": "resnet"}], ids=["shorthand", "mapping"])
def test_unknown_model_lists_available(model: Any) -> None:
    msg = error_of(make(model=model))
    assert "model.name" in msg
    assert "resnet" in msg
    assert "lenet5" in msg and "lenet300" in msg


def test_unknown_model_arg_key() -> None:
    msg = error_of(make(model={"name": "lenet5", "argz": {}}))
    assert "model.argz" in msg
    assert "args" in msg.split("model.argz", 1)[1]


# --------------------------------------------------------------------------- admm period


def test_admm_period_longer_than_epochs() -> None:
    msg = error_of(make(admm={"epochs": 2, "period": 3}))
    assert "admm" in msg
    assert "period (3)" in msg
    assert "epochs (2)" in msg
    assert "no ADMM update" in msg


def test_admm_default_period_longer_than_short_epochs() -> None:
    msg = error_of(make(admm={"epochs": 2}))
    assert "period (4)" in msg and "epochs (2)" in msg


def test_admm_period_equal_to_epochs_is_valid() -> None:
    cfg = validate_config(make(admm={"epochs": 3, "period": 3}))
    assert cfg.admm.period == cfg.admm.epochs == 3


# --------------------------------------------------------------------------- required keys


def test_missing_model() -> None:
    raw = make()
    del raw["model"]
    assert "  - model: required" in error_of(raw)


def test_missing_rules_asks_for_rules_or_a_target() -> None:
    raw = make()
    del raw["rules"]
    msg = error_of(raw)
    assert "at least one layer rule is needed" in msg and "target" in msg


def test_all_errors_reported_at_once() -> None:
    msg = error_of({"modle": 1, "admm": {"rhoo": 1}})
    for key in ("modle", "admm.rhoo", "model"):
        assert f"  - {key}:" in msg


# --------------------------------------------------------------------------- files


def test_load_valid_file(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, make()))
    assert cfg.rules["conv1"].keep == 0.2


def test_error_names_the_source_file(tmp_path: Path) -> None:
    path = write(tmp_path, make(modle=1))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "modle" in str(info.value)


def test_yaml_syntax_error_names_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("model: lenet5\nrules: {conv1: {prune: irregular, keep: 0.2}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "YAML" in msg


def test_yaml_syntax_error_position_names_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("model: lenet5\nrules: {conv1: {prune: irregular, keep: 0.2}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "<unicode string>" not in str(info.value)


def test_missing_file_names_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "does not exist" in str(info.value)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_top_level_list_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- model\n- rules\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "mapping" in msg and "list" in msg


def test_empty_file_reports_required_keys(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "model: required" in str(info.value)


# --------------------------------------------------------------------------- --set overrides


def test_override_float_int_and_rule() -> None:
    cfg = load_config(TINY, ["admm.rho=0.01", "retrain.epochs=3", "rules.conv1.keep=0.3"])
    assert cfg.admm.rho == pytest.approx(0.01)
    assert isinstance(cfg.admm.rho, float)
    assert cfg.retrain.epochs == 3
    assert cfg.rules["conv1"].keep == pytest.approx(0.3)
    # untouched values stay as in the file
    assert cfg.rules["conv2"].keep == pytest.approx(0.1)
    assert cfg.admm.epochs == 2


def test_override_exponent_float() -> None:
    cfg = load_config(TINY, ["admm.rho=1e-2"])
    assert cfg.admm.rho == pytest.approx(0.01)


def test_override_glob_rule_name() -> None:
    cfg = load_config(TINY, ["rules.fc*.keep=0.5"])
    assert cfg.rules["fc*"].keep == pytest.approx(0.5)


def test_override_layer_name_with_dots(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        make(
            rules={
                "features.0": {"prune": "irregular", "keep": 0.2},
                "features": {"prune": "irregular", "keep": 0.9},
            }
        ),
    )
    cfg = load_config(path, ["rules.features.0.keep=0.4"])
    assert set(cfg.rules) == {"features.0", "features"}
    assert cfg.rules["features.0"].keep == pytest.approx(0.4)
    assert cfg.rules["features"].keep == pytest.approx(0.9)


def test_override_adds_a_section(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, make()), ["admm.epochs=8", "admm.period=2"])
    assert (cfg.admm.epochs, cfg.admm.period) == (8, 2)


def test_override_whole_model_shorthand() -> None:
    cfg = load_config(TINY, ["model=lenet300"])
    assert cfg.model.name == "lenet300"


def test_override_model_name_on_shorthand() -> None:
    cfg = load_config(TINY, ["model.name=lenet300"])
    assert cfg.model.name == "lenet300"


def test_override_unknown_key_rejected_like_file() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(TINY, ["admm.rhoo=1"])
    msg = str(info.value)
    assert "admm.rhoo" in msg
    assert "unknown key" in msg
    assert "rho" in msg.split("admm.rhoo", 1)[1]


def test_override_without_equals() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(TINY, ["nokeyvalue"])
    msg = str(info.value)
    assert "nokeyvalue" in msg
    assert "key=value" in msg


def test_override_invalid_value_names_key() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(TINY, ["admm.rho=-1"])
    assert "admm.rho" in str(info.value)
    assert "greater than 0" in str(info.value)


def test_override_empty_key_part() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(TINY, ["admm..rho=1"])
    assert "empty part" in str(info.value)


def test_override_into_a_value() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(TINY, ["seed.x=1"])
    assert "seed" in str(info.value)
    assert "not a section" in str(info.value)


def test_override_bad_yaml_value() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(TINY, ["admm.rho=[1"])
    assert "admm.rho=[1" in str(info.value)
    assert "not valid YAML" in str(info.value)


def test_override_does_not_touch_the_file() -> None:
    before = TINY.read_text()
    load_config(TINY, ["admm.rho=0.5"])
    assert TINY.read_text() == before


# --------------------------------------------------------------------------- rule selection


def constraints_for(rules: dict[str, Any]) -> dict[str, Any]:
    return layer_constraints(create_model("lenet5"), validate_config(make(rules=rules)))


def test_rule_matching_no_layer() -> None:
    with pytest.raises(SelectionError) as info:
        constraints_for({"conv9": {"prune": "irregular", "keep": 0.5}})
    msg = str(info.value)
    assert "'conv9'" in msg
    assert "matches no parameter" in msg
    assert LENET5_LAYERS in msg


def test_glob_matching_no_layer() -> None:
    with pytest.raises(SelectionError) as info:
        constraints_for({"features.*": {"prune": "irregular", "keep": 0.5}})
    assert "'features.*'" in str(info.value)
    assert LENET5_LAYERS in str(info.value)


def test_layer_matched_by_two_rules() -> None:
    with pytest.raises(SelectionError) as info:
        constraints_for(
            {
                "conv1": {"prune": "irregular", "keep": 0.5},
                "conv*": {"prune": "irregular", "keep": 0.1},
            }
        )
    msg = str(info.value)
    assert "'conv1'" in msg
    assert "'conv*'" in msg
    assert "two rules" in msg


def test_type_selector() -> None:
    got = constraints_for({"type:Linear": {"prune": "irregular", "keep": 0.1}})
    assert list(got) == ["fc1", "fc2"]


def test_rules_come_back_in_layer_order() -> None:
    got = constraints_for(
        {
            "fc*": {"prune": "irregular", "keep": 0.1},
            "type:Conv2d": {"prune": "filter", "keep": 0.5},
        }
    )
    assert list(got) == ["conv1", "conv2", "fc1", "fc2"]


# --------------------------------------------------------------------------- shipped recipes


def test_recipes_exist() -> None:
    assert TINY in RECIPES


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(CONFIGS)) for p in RECIPES])
def test_recipe_validates_and_resolves(path: Path) -> None:
    cfg = load_config(path)
    model = create_model(cfg.model.name, **cfg.model.args)
    for step in cfg.step_list():
        check_step_selectors(model, step)
    first = cfg.step_list()[0]
    if first.target is None or first.target.allocation != "sensitivity":
        assert plan_step(model, first, {}, {}).rules
    # every rule selects something (layer_constraints raises otherwise) and the
    # config round-trips through its own dump
    assert validate_config(cfg.model_dump(mode="json")) == cfg


def test_16x_recipe_is_the_benchmarks_one_step_admm_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """The recipe and the README quote the one-step ADMM figure of benchmarks/baselines.py
    at 16x on 12 epochs; this keeps the two one run, down to every field."""
    monkeypatch.syspath_prepend(str(CONFIGS.parent / "benchmarks"))
    baselines = importlib.import_module("baselines")
    setup = baselines.SETUPS["resnet20_cifar"]
    recipe = load_config(CONFIGS / "resnet20_cifar10_prune_16x.yaml")
    bench = validate_config(
        {
            "name": recipe.name,
            "seed": 0,
            "model": "resnet20_cifar",
            "init": "weights/resnet20_cifar10_dense.safetensors",
            "data": setup["data"],
            "runtime": setup["runtime"],
            "steps": baselines.method_steps("one-step ADMM", 16, 12, 2, setup["opt"]),
        }
    )
    assert recipe == bench
