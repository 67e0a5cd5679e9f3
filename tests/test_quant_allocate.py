"""The bit allocator: exact optimum (brute force), never over budget, monotone, clear errors."""

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asrquant.quant.allocate import (
    BudgetError,
    GroupOptions,
    allocate,
    budget_bytes_from,
    min_total_bytes,
)


def brute_force(groups, budget, fixed=0):
    best = None
    for choice in itertools.product(*(g.bits for g in groups)):
        nb = fixed + sum(g.nbytes[b] for g, b in zip(groups, choice, strict=True))
        cost = sum(g.cost[b] for g, b in zip(groups, choice, strict=True))
        if nb <= budget and (best is None or cost < best[0] - 1e-12):
            best = (cost, nb, choice)
    return best


@st.composite
def instances(draw):
    n = draw(st.integers(1, 5))
    bits = draw(st.lists(st.sampled_from([2, 3, 4, 8]), min_size=1, max_size=4, unique=True))
    groups = []
    for i in range(n):
        nbytes = {b: draw(st.integers(0, 60)) for b in bits}
        cost = {b: draw(st.floats(-1, 10, allow_nan=False, width=32)) for b in bits}
        groups.append(GroupOptions(f"g{i}", nbytes, cost))
    fixed = draw(st.integers(0, 20))
    lo = min_total_bytes(groups, fixed)
    hi = fixed + sum(max(g.nbytes.values()) for g in groups)
    budget = draw(st.integers(lo, hi + 5))
    return groups, budget, fixed


@settings(max_examples=300, deadline=None, derandomize=True)
@given(instances())
def test_allocate_is_the_brute_force_optimum_and_never_over_budget(inst):
    groups, budget, fixed = inst
    a = allocate(groups, budget, fixed)
    assert a.nbytes <= budget
    assert a.nbytes == fixed + sum(g.nbytes[a.bits[g.name]] for g in groups)
    assert a.cost == pytest.approx(sum(g.cost[a.bits[g.name]] for g in groups))
    best_cost, _, _ = brute_force(groups, budget, fixed)
    assert a.cost == pytest.approx(best_cost, abs=1e-9)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(instances(), st.integers(0, 40))
def test_a_larger_budget_never_costs_more(inst, extra):
    groups, budget, fixed = inst
    assert allocate(groups, budget + extra, fixed).cost <= allocate(groups, budget,
                                                                    fixed).cost + 1e-9


def test_the_usual_trade_picks_the_sensitive_group_for_more_bits():
    # Two groups of equal size; "attn" loses much more at 2 bits than "ffn".
    size = {2: 100, 4: 180}
    attn = GroupOptions("attn", size, {2: 5.0, 4: 0.1})
    ffn = GroupOptions("ffn", size, {2: 0.5, 4: 0.05})
    assert allocate([attn, ffn], 200).bits == {"attn": 2, "ffn": 2}
    assert allocate([attn, ffn], 280).bits == {"attn": 4, "ffn": 2}
    assert allocate([attn, ffn], 360).bits == {"attn": 4, "ffn": 4}


def test_ties_go_to_fewer_bytes():
    g = GroupOptions("g", {2: 10, 4: 20, 8: 40}, {2: 0.0, 4: 0.0, 8: 0.0})
    a = allocate([g], 100)
    assert a.bits == {"g": 2} and a.nbytes == 10


def test_a_budget_below_the_minimum_names_both():
    g = GroupOptions("g", {2: 1_000_000, 4: 2_000_000}, {2: 1.0, 4: 0.0})
    with pytest.raises(BudgetError, match=r"budget 1,100,000 bytes \(1.100000 MB\) is below "
                                          r"the smallest size these candidates reach, "
                                          r"1,200,000 bytes \(1.200000 MB"):
        allocate([g], 1_100_000, fixed_bytes=200_000)


def test_bad_groups_are_refused():
    with pytest.raises(ValueError, match="the same non-empty set of bit widths"):
        GroupOptions("g", {2: 1}, {4: 1.0})
    with pytest.raises(ValueError, match=r"cost\[2\]=nan is invalid"):
        GroupOptions("g", {2: 1}, {2: math.nan})
    with pytest.raises(ValueError, match=r"nbytes\[2\]=-1 is invalid"):
        GroupOptions("g", {2: -1}, {2: 0.0})
    g = GroupOptions("g", {2: 1}, {2: 0.0})
    with pytest.raises(ValueError, match="unique"):
        allocate([g, g], 10)


def test_budgets_in_mb_and_in_bits_per_weight():
    assert budget_bytes_from(budget_mb=0.9, fixed_bytes=5, num_weights=8) == 900_000
    # 3 bits per weight over 1000 weights = 375 bytes, plus the 40 fixed bytes
    assert budget_bytes_from(budget_bpw=3, fixed_bytes=40, num_weights=1000) == 415
    assert budget_bytes_from(budget_bpw=3.0, fixed_bytes=0, num_weights=3) == 1  # floor


@pytest.mark.parametrize("kwargs, needle", [
    ({}, "exactly one of budget_mb"),
    ({"budget_mb": 1.0, "budget_bpw": 3.0}, "exactly one of budget_mb"),
    ({"budget_mb": 0}, "budget_mb=0 is invalid; allowed: a number > 0"),
    ({"budget_mb": -2.5}, "budget_mb=-2.5 is invalid"),
    ({"budget_bpw": math.inf}, "budget_bpw=inf is invalid"),
    ({"budget_bpw": "3"}, "budget_bpw='3' is invalid"),
    ({"budget_bpw": True}, "budget_bpw=True is invalid"),
])
def test_bad_budgets_are_refused(kwargs, needle):
    with pytest.raises(BudgetError, match=needle):
        budget_bytes_from(**kwargs, fixed_bytes=0, num_weights=10)
