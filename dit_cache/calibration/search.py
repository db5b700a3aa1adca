"""The plan search: a dynamic program over steps that picks one action per step.

Predicted error of a plan = sum over its cached steps of ``weight[step] * error[step, action,
age]`` (age: steps since the last full step, whose cache the action reuses). Costs are FLOPs
per step as a share of a full step, counted in `QUANTUM`ths; the program finds, for every
total cost up to the budget, the plan of least predicted error.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

QUANTUM = 1000  # cost units per full step


@dataclass(frozen=True)
class Plan:
    actions: tuple[str, ...]
    predicted: float  # predicted error (weighted squared latent error, summed)
    cost: float  # FLOPs as a share of an all-full run


def search(n_steps: int, costs: dict[str, float], error: dict[tuple[int, str, int], float],
           weights: list[float], max_age: int, budget: float | None = None,
           max_error: float | None = None) -> Plan:
    """The least-error plan within `budget` (a share of the all-full FLOPs), or, with
    `max_error`, the cheapest plan whose predicted error is at most that. `costs`: action ->
    FLOPs share of a full step ("F" is 1); `error[(step, action, age)]` for the pairs measured
    (others are not allowed)."""
    actions = [a for a in costs if a != "F"]
    units = {a: max(1, int(round(costs[a] * QUANTUM))) for a in actions}
    top = n_steps * QUANTUM
    limit = top if budget is None else int(np.floor(budget * top + 1e-9))
    if limit < QUANTUM:
        raise ValueError(f"a budget of {budget:.3f} cannot pay for the first (full) step")
    inf = np.inf
    # dp[age][b]: least error after the current step, the last full step `age` steps ago, cost b
    dp = np.full((max_age + 1, limit + 1), inf)
    dp[0, QUANTUM] = 0.0
    parents = []  # per step: (max_age + 1, limit + 1) arrays of (previous age, action index + 1)
    for step in range(1, n_steps):
        new = np.full_like(dp, inf)
        prev_age = np.full(dp.shape, -1, dtype=np.int16)
        choice = np.zeros(dp.shape, dtype=np.int16)  # 0 = F
        best_any = dp.min(axis=0)
        best_age = dp.argmin(axis=0)
        new[0, QUANTUM:] = best_any[: limit + 1 - QUANTUM]
        prev_age[0, QUANTUM:] = best_age[: limit + 1 - QUANTUM]
        for i, a in enumerate(actions, start=1):
            c = units[a]
            for age in range(max_age):
                e = error.get((step, a, age + 1))
                if e is None or c > limit:
                    continue
                cand = dp[age, : limit + 1 - c] + weights[step] * e
                target = new[age + 1, c:]
                better = cand < target
                target[better] = cand[better]
                prev_age[age + 1, c:][better] = age
                choice[age + 1, c:][better] = i
        dp = new
        parents.append((prev_age, choice))
    final = dp.min(axis=0)
    if not np.isfinite(final).any():
        raise ValueError(f"no plan of these actions fits a budget of {budget} with cache ages <= {max_age}")
    if max_error is not None:
        ok = np.nonzero(final <= max_error)[0]
        b = int(ok[0]) if ok.size else int(np.argmin(final))
    else:
        b = int(np.argmin(final))
    age = int(dp[:, b].argmin())
    predicted = float(final[b])
    plan = []
    for prev_age, choice in reversed(parents):
        i, came_from = int(choice[age, b]), int(prev_age[age, b])
        a = "F" if i == 0 else actions[i - 1]
        plan.append(a)
        b -= QUANTUM if i == 0 else units[a]
        age = came_from
    plan.append("F")
    plan.reverse()
    return Plan(tuple(plan), predicted, plan_cost(plan, costs))


def plan_cost(plan, costs: dict[str, float]) -> float:
    return sum(costs[a] for a in plan) / len(plan)


def predicted_error(plan, error, weights) -> float:
    """The predicted error of a given plan (inf when it uses an age that was not measured)."""
    total, age = 0.0, 0
    for step, a in enumerate(plan):
        if a == "F":
            age = 0
            continue
        age += 1
        e = error.get((step, a, age))
        if e is None:
            return float("inf")
        total += weights[step] * e
    return total
