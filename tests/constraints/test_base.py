"""Constraint kinds own their parameters: built from mappings, refused with the kind's words."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import Tensor

from admmcompress.constraints import (
    Constraint,
    ConstraintError,
    Irregular,
    Uniform,
    available_constraints,
    constraint_class,
    make_constraint,
    register_constraint,
)
from admmcompress.constraints import base as constraints_base
from admmcompress.recipe.rules import RuleConfig
from admmcompress.recipe.schema import ConfigError, validate_config


def test_parameters_are_the_dataclass_fields() -> None:
    assert Irregular.parameter_names() == ("keep", "count")
    assert Uniform.parameter_names() == ("bits", "per_channel")
    assert Irregular(count=3).params() == {"keep": None, "count": 3}
    assert "keep (the share kept, a ratio in (0, 1])" in Irregular.usage()


def test_from_params_names_unknown_and_missing_parameters() -> None:
    with pytest.raises(ConstraintError, match="irregular: unknown parameters 'n', 'm'") as e:
        make_constraint("irregular", keep=0.1, n=2, m=4)
    assert e.value.param == "n"
    with pytest.raises(ConstraintError, match="uniform needs bits; it takes bits") as e:
        make_constraint("uniform")
    assert e.value.param == "bits"
    assert make_constraint("irregular", keep=0.1, count=None) == Irregular(keep=0.1)


def test_unknown_kind_lists_the_registered_ones() -> None:
    with pytest.raises(ConstraintError) as e:
        constraint_class("blocky")
    for kind in ("irregular", "filter", "nm", "binary", "uniform"):
        assert kind in str(e.value)


@dataclass(frozen=True)
class _EveryOther(Constraint):
    """A toy kind registered by a test: keep every ``stride``-th weight."""

    stride: int = 2
    parameter_help: ClassVar[dict[str, str]] = {"stride": "keep one weight in this many"}

    def mask(self, w: Tensor) -> Tensor:
        m = torch.zeros(w.numel(), dtype=torch.bool)
        m[:: self.stride] = True
        return m.view_as(w)

    def project(self, w: Tensor) -> Tensor:
        return w * self.mask(w)

    def violation(self, w: Tensor) -> str | None:
        return None if not bool(w[~self.mask(w)].any()) else "off the stride"

    def budget(self, w: Tensor) -> int:
        return int(self.mask(w).sum())


def test_a_new_kind_reaches_configs_without_touching_the_schema(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = constraints_base._REGISTRY
    monkeypatch.setattr(registry, "_items", dict(registry._items))
    register_constraint("every_other")(_EveryOther)
    assert "every_other" in available_constraints("prune")
    cfg = validate_config({"model": "lenet5", "rules": {"fc2": {"prune": "every_other"}}})
    assert cfg.rules["fc2"].constraint() == _EveryOther(stride=2)
    with pytest.raises(ConfigError, match=r"rules\.fc2\.strid: every_other: unknown parameter"):
        validate_config({"model": "lenet5", "rules": {"fc2": {"prune": "every_other", "strid": 3}}})
    # a later step's rule replaces the pruning aspect whole, whatever its parameters
    merged = RuleConfig(prune="every_other", stride=3).merged_over(
        RuleConfig(prune="irregular", keep=0.1, quantize="binary")
    )
    assert merged.prune_params() == {"stride": 3}
    assert merged.quantize is not None and merged.quantize.kind == "binary"
