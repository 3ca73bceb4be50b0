"""Constraint sets with exact projections, looked up by kind (``make_constraint``)."""

from .base import Constraint, available_constraints, make_constraint, register_constraint
from .pruning import (
    Channel,
    Column,
    Filter,
    Irregular,
    group_count,
    group_mask,
    irregular_mask,
    keep_count,
    project_channels,
    project_columns,
    project_filters,
    project_irregular,
    topk_mask,
)

__all__ = [
    "Channel",
    "Column",
    "Constraint",
    "Filter",
    "Irregular",
    "available_constraints",
    "group_count",
    "group_mask",
    "irregular_mask",
    "keep_count",
    "make_constraint",
    "project_channels",
    "project_columns",
    "project_filters",
    "project_irregular",
    "register_constraint",
    "topk_mask",
]
