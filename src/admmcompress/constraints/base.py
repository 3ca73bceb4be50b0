"""The constraint-set interface, the registry that lets a config name a set by its kind, and
the parameter checks the kinds share.

A constraint kind owns its parameters: they are the fields of its dataclass, checked once,
in its ``__post_init__``. Everything else (config validation, the merge of a progressive
step's rules, error messages, the config reference) reads them from the class, so adding a
kind is one new module that defines and registers it.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

from torch import Tensor

from ..registry import Registry


class ConstraintError(ValueError):
    """Parameters that describe no set, or a set that cannot apply to a given weight.

    ``param`` names the offending parameter, when there is one, so that a config error can
    point at its key.
    """

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class Constraint(ABC):
    """A set S of admissible weight tensors, with the exact Euclidean projection onto it.

    Subclasses are small frozen dataclasses: their fields are the set's parameters (how many
    weights or groups to keep, how many bits) and nothing about a particular layer, so one
    rule can serve many layers.
    """

    kind: ClassVar[str]
    #: "prune" for sets that zero weights, "quantize" for sets of few values, "combined"
    #: for intersections; a config rule's ``prune:`` and ``quantize:`` name kinds of the
    #: first two families.
    family: ClassVar[str] = "prune"
    #: One short phrase per parameter, for error messages and the config reference.
    parameter_help: ClassVar[Mapping[str, str]] = {}

    @abstractmethod
    def project(self, w: Tensor) -> Tensor:
        """Nearest point of the set to ``w`` (a new tensor, same shape, dtype and device)."""

    @abstractmethod
    def mask(self, w: Tensor) -> Tensor:
        """Boolean support that ``project(w)`` keeps: the pruning mask after hardening."""

    @abstractmethod
    def violation(self, w: Tensor) -> str | None:
        """Why ``w`` is outside the set, or None when it satisfies the constraint exactly."""

    @abstractmethod
    def budget(self, w: Tensor) -> int:
        """Most non-zero weights a member of the set can have for a tensor shaped like ``w``."""

    def check_fits(self, w: Tensor) -> None:  # noqa: B027 (most sets fit any shape)
        """Raise ``ConstraintError`` when the set cannot describe a weight shaped like ``w``.

        Called before training starts, so a rule that cannot apply to a layer fails then
        and not at the first projection.
        """

    def describe(self) -> str:
        return self.kind

    # -- parameters ------------------------------------------------------------------------
    @classmethod
    def parameter_names(cls) -> tuple[str, ...]:
        """The kind's parameters, in the order its dataclass declares them."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.init)  # type: ignore[arg-type]

    @classmethod
    def usage(cls) -> str:
        """What the kind takes, e.g. ``keep (ratio of weights kept, in (0, 1]) or count``."""
        names = cls.parameter_names()
        if not names:
            return "no parameters"
        return ", ".join(
            f"{n} ({cls.parameter_help[n]})" if n in cls.parameter_help else n for n in names
        )

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Constraint:
        """Build the set from a mapping of parameters; a parameter set to None is left out
        (its default applies). Messages name the kind and what it takes."""
        given = {k: v for k, v in params.items() if v is not None}
        names = cls.parameter_names()
        unknown = [k for k in given if k not in names]
        if unknown:
            raise ConstraintError(
                f"{cls.kind}: unknown parameter{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(map(repr, unknown))}; {cls.kind} takes {cls.usage()}",
                param=unknown[0],
            )
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        missing = [
            n
            for n in names
            if n not in given
            and fields[n].default is dataclasses.MISSING
            and fields[n].default_factory is dataclasses.MISSING
        ]
        if missing:
            raise ConstraintError(
                f"{cls.kind} needs {', '.join(missing)}; it takes {cls.usage()}", missing[0]
            )
        return cls(**given)

    def params(self) -> dict[str, Any]:
        """Every parameter and its value (None where unset), in declaration order."""
        return {n: getattr(self, n) for n in self.parameter_names()}


# -- checks shared by the kinds: each lives here once -----------------------------------
def check_ratio(kind: str, name: str, value: Any) -> float:
    """A ratio in (0, 1], e.g. the share of weights a pruning rule keeps."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConstraintError(f"{kind}: {name} must be a number in (0, 1], got {value!r}", name)
    if not 0.0 < value <= 1.0:
        raise ConstraintError(
            f"{kind}: {name} must be a ratio in (0, 1] (0.05 keeps 5%), got {value!r}", name
        )
    return float(value)


def check_int(
    kind: str, name: str, value: Any, low: int = 1, high: int | None = None, hint: str = ""
) -> int:
    """An integer in ``low..high`` (``high`` None: no upper bound); ``hint`` is appended."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        number = None
    if number is None or number < low or (high is not None and number > high):
        span = f"in {low}..{high}" if high is not None else f">= {low}"
        raise ConstraintError(
            f"{kind}: {name} must be an integer {span}, got {value!r}{hint}", name
        )
    return number


def check_flag(kind: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConstraintError(f"{kind}: {name} must be true or false, got {value!r}", name)
    return value


# -- the registry ------------------------------------------------------------------------
_REGISTRY: Registry[type[Constraint]] = Registry(
    "constraint kind", error=ConstraintError, discover="admmcompress.constraints"
)
C = TypeVar("C", bound=type[Constraint])


def register_constraint(kind: str) -> Callable[[C], C]:
    """Class decorator: make a constraint available to configs under ``kind``."""

    def wrap(cls: C) -> C:
        cls.kind = kind
        return _REGISTRY.register(kind)(cls)

    return wrap


def available_constraints(family: str | None = None) -> list[str]:
    """Registered kinds (of one family: "prune", "quantize" or "combined"), sorted."""
    return sorted(k for k, c in _REGISTRY.items() if family is None or c.family == family)


def constraint_class(kind: str) -> type[Constraint]:
    """The class registered under ``kind``; the error lists every registered kind."""
    return _REGISTRY.get(kind)


def make_constraint(kind: str, **params: Any) -> Constraint:
    """Build a registered constraint by name, e.g. ``make_constraint("irregular", keep=0.1)``."""
    return constraint_class(kind).from_params(params)
