"""Mixed-precision bit allocation: one bit width per layer group, least total cost under a size
budget. Pure Python (no torch): the caller measures sizes (`build_report`) and costs.

The problem is a multiple-choice knapsack: group g at candidate b (a bit width, or any
label such as "2g128") costs `cost[g][b]` (the measured sensitivity, e.g. the dev-loss
increase when only g is quantized to b bits) and takes `nbytes[g][b]` bytes (codes, scales
and zero points as export writes them). Costs are taken as additive: the cost of a whole
assignment is the sum of its groups' costs.

`allocate` solves it exactly by dynamic programming over Pareto-optimal partial solutions:
after each group only the assignments that no other beats in both bytes and cost are kept,
and any that can no longer fit the budget (with every later group at its smallest size) are
dropped. Byte counts are integers and never rounded, so the result never exceeds the budget
and no cheaper assignment within the budget exists. Ties are broken towards fewer bytes,
then towards the earlier choice in each group's candidate order.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from asrquant.checks import check_number

MB = 1_000_000  # the MB of QuantReport.size_mb


class BudgetError(ValueError):
    """The budget cannot be met (or is not a valid budget)."""


@dataclass(frozen=True)
class GroupOptions:
    """One layer group: for each candidate (bit width or label), its stored bytes and measured
    cost."""

    name: str
    nbytes: Mapping[Hashable, int]
    cost: Mapping[Hashable, float]

    def __post_init__(self):
        if set(self.nbytes) != set(self.cost) or not self.nbytes:
            raise ValueError(f"group {self.name!r}: bytes are given for bits "
                             f"{sorted(self.nbytes)} but costs for {sorted(self.cost)}; "
                             "allowed: the same non-empty set of bit widths")
        for b in self.nbytes:
            check_number(f"group {self.name!r}: nbytes[{b}]", self.nbytes[b], ge=0, integer=True)
            check_number(f"group {self.name!r}: cost[{b}]", self.cost[b])

    @property
    def bits(self) -> list:
        return list(self.nbytes)

    def min_bytes(self) -> int:
        return min(self.nbytes.values())


@dataclass(frozen=True)
class Allocation:
    bits: dict  # group name -> chosen candidate (bit width or label)
    nbytes: int  # total bytes: chosen groups plus `fixed_bytes`
    cost: float  # sum of the chosen groups' costs
    budget_bytes: int


def min_total_bytes(groups: Sequence[GroupOptions], fixed_bytes: int = 0) -> int:
    """The smallest size any assignment reaches: every group at its smallest option."""
    return fixed_bytes + sum(g.min_bytes() for g in groups)


def allocate(groups: Sequence[GroupOptions], budget_bytes: int,
             fixed_bytes: int = 0) -> Allocation:
    """The assignment of one bit width per group with the least total cost among those whose
    total bytes (`fixed_bytes` for what is not searched + each group's bytes) are at most
    `budget_bytes`. Raises BudgetError naming the budget and the minimum if none fits."""
    with _as_budget_error():
        check_number("budget_bytes", budget_bytes, integer=True)
    names = [g.name for g in groups]
    if len(set(names)) != len(names):
        raise ValueError(f"group names must be unique; got {names}")
    smallest = min_total_bytes(groups, fixed_bytes)
    if budget_bytes < smallest:
        raise BudgetError(
            f"budget {budget_bytes:,} bytes ({budget_bytes / MB:.6f} MB) is below the smallest "
            f"size these candidates reach, {smallest:,} bytes ({smallest / MB:.6f} MB, every "
            "group at its smallest option); raise the budget or add smaller candidates")
    # rest_min[i]: the least bytes groups i.. can take.
    rest_min = [0] * (len(groups) + 1)
    for i in range(len(groups) - 1, -1, -1):
        rest_min[i] = rest_min[i + 1] + groups[i].min_bytes()
    # A state: (bytes, cost, choice indices). Start: nothing chosen yet.
    front: list[tuple[int, float, tuple[int, ...]]] = [(fixed_bytes, 0.0, ())]
    for i, g in enumerate(groups):
        limit = budget_bytes - rest_min[i + 1]
        options = list(g.nbytes.items())
        nxt = [
            (nb + g.nbytes[b], cost + g.cost[b], (*choice, k))
            for nb, cost, choice in front
            for k, (b, _) in enumerate(options)
            if nb + g.nbytes[b] <= limit
        ]
        front = _pareto(nxt)
    nb, cost, choice = min(front, key=lambda s: (s[1], s[0], s[2]))
    bits = {g.name: g.bits[k] for g, k in zip(groups, choice, strict=True)}
    return Allocation(bits=bits, nbytes=nb, cost=cost, budget_bytes=budget_bytes)


def _pareto(states):
    """The states no other state beats in both bytes and cost (one per bytes value)."""
    states.sort(key=lambda s: (s[0], s[1], s[2]))
    out, best = [], math.inf
    for s in states:
        if s[1] < best:
            out.append(s)
            best = s[1]
    return out


def check_budget(budget_mb: float | None = None, budget_bpw: float | None = None
                 ) -> tuple[str, float]:
    """The one rule of a budget: exactly one of budget_mb and budget_bpw, a number > 0.
    Returns (its key, its value); raises BudgetError otherwise."""
    given = {k: v for k, v in (("budget_mb", budget_mb), ("budget_bpw", budget_bpw))
             if v is not None}
    if len(given) != 1:
        raise BudgetError("give exactly one of budget_mb (model size in MB) and budget_bpw "
                          f"(bits per quantized weight); got {given or 'neither'}")
    (key, value), = given.items()
    with _as_budget_error():
        check_number(key, value, gt=0)
    return key, value


def budget_bytes_from(budget_mb: float | None = None, budget_bpw: float | None = None, *,
                      fixed_bytes: int, num_weights: int) -> int:
    """A byte budget from exactly one of (`check_budget`)
    budget_mb: the whole model's size in MB (1e6 bytes; searched groups plus `fixed_bytes`,
        the unquantized parameters: QuantReport's size_mb), or
    budget_bpw: bits per quantized weight (codes, scales and zero points of the `num_weights`
        searched weights: QuantReport's effective_bits), plus `fixed_bytes`.
    """
    key, value = check_budget(budget_mb, budget_bpw)
    if key == "budget_mb":
        return math.floor(value * MB + 1e-6)
    return fixed_bytes + math.floor(value * num_weights / 8 + 1e-6)


@contextlib.contextmanager
def _as_budget_error() -> Iterator[None]:
    """A bad budget value (checks' ValueError) raised as BudgetError."""
    try:
        yield
    except BudgetError:
        raise
    except ValueError as e:
        raise BudgetError(str(e)) from None
