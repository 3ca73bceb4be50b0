"""A config rule: how one layer (or a pattern of layers) is pruned, quantized, or both.

A rule is a pruning kind with that kind's own parameters, and/or a quantization kind with
its own: ``{prune: irregular, keep: 0.1}``, ``{prune: nm, n: 2, m: 4, quantize: 4}``,
``{quantize: {kind: uniform, bits: 3, per_channel: true}}``. The schema knows no kind and
no parameter: both come from the constraint registry, and the constraint class checks its
own parameters, so its messages are the config's messages.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from ..constraints import (
    Constraint,
    ConstraintError,
    available_constraints,
    combine,
    constraint_class,
)


def _kind_class(kind: Any, family: str, key: str) -> type[Constraint]:
    kinds = available_constraints(family)
    if not isinstance(kind, str) or kind not in kinds:
        what = "pruning" if family == "prune" else "quantization"
        raise ConstraintError(f"unknown {what} kind {kind!r}; allowed: {', '.join(kinds)}", key)
    return constraint_class(kind)


def _canonical(cls: type[Constraint], params: dict[str, Any]) -> dict[str, Any]:
    """Every parameter of the kind, as the class normalised it (None where unset)."""
    return cls.from_params(params).params()


class QuantizeConfig(BaseModel):
    """Which values a layer's weights may take: a quantization kind and its parameters.

    Short forms: ``quantize: binary`` (any kind that needs no parameter) and ``quantize: 4``
    (4-bit uniform).
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    kind: str

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        if isinstance(v, str):
            return {"kind": v}
        if isinstance(v, int) and not isinstance(v, bool):
            return {"kind": "uniform", "bits": v}
        return v

    @model_validator(mode="after")
    def _valid(self) -> QuantizeConfig:
        quant = _kind_class(self.kind, "quantize", "kind")
        self.__pydantic_extra__ = _canonical(quant, dict(self.model_extra or {}))
        return self

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def constraint(self) -> Constraint:
        return constraint_class(self.kind).from_params(self.params())


class RuleConfig(BaseModel):
    """``prune: KIND`` with that kind's parameters beside it, ``quantize:``, or both."""

    model_config = ConfigDict(extra="allow", frozen=True)

    prune: str | None = None
    quantize: QuantizeConfig | None = None

    @model_validator(mode="after")
    def _valid(self) -> RuleConfig:
        given = {k: v for k, v in (self.model_extra or {}).items() if v is not None}
        if self.prune is None:
            if given:
                raise ConstraintError(
                    f"{', '.join(map(repr, given))} need{'s' if len(given) == 1 else ''} "
                    f"'prune', a pruning kind ({', '.join(available_constraints('prune'))})",
                    "prune",
                )
            if self.quantize is None:
                raise ValueError(
                    "a rule needs 'prune' (with that kind's parameters), 'quantize', or both, "
                    "e.g. {prune: irregular, keep: 0.1} or {quantize: binary}"
                )
            self.__pydantic_extra__ = {}
            return self
        prune = _kind_class(self.prune, "prune", "prune")
        self.__pydantic_extra__ = _canonical(prune, dict(self.model_extra or {}))
        return self

    def prune_params(self) -> dict[str, Any]:
        """The pruning kind's parameters (None where unset)."""
        return dict(self.model_extra or {})

    def constraint(self) -> Constraint:
        """The constraint set the rule describes: pruned, quantized, or both."""
        prune = None
        if self.prune is not None:
            prune = constraint_class(self.prune).from_params(self.prune_params())
        quant = self.quantize.constraint() if self.quantize is not None else None
        return combine(prune, quant)

    def merged_over(self, old: RuleConfig | None) -> RuleConfig:
        """This rule over ``old``, aspect by aspect: a rule that names no pruning kind keeps
        the old pruning, one that names no quantization keeps the old quantization."""
        if old is None:
            return self
        src = self if self.prune is not None else old
        quantize = self.quantize if self.quantize is not None else old.quantize
        return RuleConfig.model_validate(
            {"prune": src.prune, **src.prune_params(), "quantize": quantize}
        )
