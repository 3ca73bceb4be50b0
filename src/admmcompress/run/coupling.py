"""The channel structure a step's filter and channel rules act on: which layers must lose
the same channels (residual sums, the layers reading one stage), and the BatchNorm entries
of removed channels, held at zero so that compact export can delete them."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ..constraints import Constraint, structured_rule
from ..recipe.rules import RuleConfig
from ..structure.groups import ChannelGroup, batchnorm_masks, channel_groups, coupled_layer_sets

log = logging.getLogger("admmcompress")


def structured_axes(constraints: Mapping[str, Constraint]) -> dict[str, str]:
    """Layers under filter or channel rules, and which of the two."""
    return {
        n: rule.rule.axis
        for n, c in constraints.items()
        if (rule := structured_rule(c)) is not None
    }


class ChannelStructure:
    """A model's channel groups, traced once (none for a model fx cannot trace)."""

    def __init__(
        self, model: nn.Module, input_shape: tuple[int, ...], device: torch.device
    ) -> None:
        self.model = model
        self.input_shape = input_shape
        self.device = device
        self._groups: list[ChannelGroup] | None = None

    def groups(self, constraints: Mapping[str, Constraint]) -> list[ChannelGroup]:
        if self._groups is None:
            example = torch.zeros(1, *self.input_shape, device=self.device)
            try:
                self._groups = channel_groups(self.model, example)
            except ValueError as e:  # not traceable: every layer is pruned on its own
                log.warning("structured pruning without coupled layers: %s", e)
                self._groups = []
            axes = structured_axes(constraints)
            for note in coupled_layer_sets(self.model, self._groups, axes)[1]:
                log.warning("%s", note)
        return self._groups

    def coupled_sets(self, constraints: Mapping[str, Constraint]) -> list[tuple[str, ...]]:
        """The layers ADMM must prune together in this step (its ``couple`` argument)."""
        axes = structured_axes(constraints)
        if not axes:
            groups: list[ChannelGroup] = []
        else:
            groups = [
                g for g in self.groups(constraints) if axes.keys() & {*g.producers, *g.consumers}
            ]
        return coupled_layer_sets(self.model, groups, axes)[0]

    def batchnorm_masks(
        self,
        rules: Mapping[str, RuleConfig],
        masks: Mapping[str, Tensor],
        constraints: Mapping[str, Constraint],
    ) -> dict[str, Tensor]:
        """BatchNorm entries of channels removed by filter rules, held at zero from the
        hardening on, in later steps too (their rules carry the filter pruning along)."""
        filters = {n for n, r in rules.items() if r.prune == "filter"}
        if not filters:
            return {}
        groups = [g for g in self.groups(constraints) if filters & set(g.producers)]
        return batchnorm_masks(self.model, groups, dict(masks))
