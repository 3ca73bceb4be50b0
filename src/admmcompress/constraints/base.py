"""The constraint-set interface and the registry that lets a config name a set by its kind."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from torch import Tensor

from ..registry import Registry


class Constraint(ABC):
    """A set S of admissible weight tensors, with the exact Euclidean projection onto it.

    Subclasses are small value objects: they hold the set's parameters (how many weights
    or groups to keep, how many bits) and nothing about a particular layer, so one rule
    can serve many layers.
    """

    kind: ClassVar[str]
    #: "prune" for sets that zero weights, "quantize" for sets of few values; configs use it
    #: to tell which kinds a rule's ``prune:`` and ``quantize:`` may name.
    family: ClassVar[str] = "prune"

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

    def describe(self) -> str:
        return self.kind


_REGISTRY: Registry[type[Constraint]] = Registry("constraint kind")
C = TypeVar("C", bound=type[Constraint])


def register_constraint(kind: str) -> Callable[[C], C]:
    """Class decorator: make a constraint available to configs under ``kind``."""

    def wrap(cls: C) -> C:
        cls.kind = kind
        return _REGISTRY.register(kind)(cls)

    return wrap


def available_constraints(family: str | None = None) -> list[str]:
    return [k for k, c in _REGISTRY.items() if family is None or c.family == family]


def make_constraint(kind: str, **params: Any) -> Constraint:
    """Build a registered constraint by name, e.g. ``make_constraint("irregular", keep=0.1)``."""
    return _REGISTRY.get(kind)(**params)
