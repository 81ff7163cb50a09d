"""Non-dominated sorting and hypervolume, delegated to Optuna's implementations.

Optuna keeps these helpers in private modules; importing them here, once, means an Optuna upgrade
that moves them touches one file.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from optuna._hypervolume import compute_hypervolume
from optuna.study._multi_objective import _fast_non_domination_rank


def to_loss(values: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """Flip maximized columns so every column is minimized."""
    signs = np.where(np.asarray(maximize, dtype=bool), -1.0, 1.0)
    return np.asarray(values, dtype=float) * signs


def nondomination_rank(values: np.ndarray, maximize: Sequence[bool],
                       n_below: int | None = None) -> np.ndarray:
    """Front index per row (0 = non-dominated). With `n_below`, only the fronts holding the best
    `n_below` rows are told apart; every later row gets one rank after them."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return np.zeros(0, dtype=int)
    return _fast_non_domination_rank(to_loss(values, maximize), n_below=n_below)


def pareto_mask(values: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    return nondomination_rank(values, maximize) == 0


def crowding_distance(values: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance within one front (boundary points get infinity).

    Infinite values (a diverged trial's accuracy is ranked as -inf) follow Optuna's NSGA-II: a
    dimension is scaled by the span of its finite values, inf - inf counts as 0, and a neighbour
    of an infinite value is as far out as a boundary point. Scaling by an infinite span instead
    would turn that neighbour's distance into NaN, which no ranking can order."""
    values = np.asarray(values, dtype=float)
    n, m = values.shape
    distance = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for j in range(m):
        order = np.argsort(values[:, j], kind="stable")
        column = values[order, j]
        distance[order[0]] = distance[order[-1]] = np.inf
        if column[0] == column[-1]:
            continue  # constant: tells no row apart
        finite = column[np.isfinite(column)]
        span = finite[-1] - finite[0] if len(finite) else 0.0
        upper, lower = column[2:], column[:-2]
        with np.errstate(invalid="ignore"):  # inf - inf, replaced by 0 below
            gap = np.where(upper == lower, 0.0, upper - lower)
        distance[order[1:-1]] += gap / (span if span > 0 else 1.0)
    return distance


def promotion_keys(values: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """(front, -crowding) per row: smaller is better (MO-ASHA's ranking; NSGA-II's order)."""
    values = np.asarray(values, dtype=float)
    ranks = nondomination_rank(values, maximize)
    crowd = np.zeros(len(values))
    loss = to_loss(values, maximize)
    for rank in np.unique(ranks):
        members = np.flatnonzero(ranks == rank)
        crowd[members] = crowding_distance(loss[members])
    return np.stack([ranks.astype(float), -crowd], axis=1)


def promotion_order(values: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """Row indices best-first by `promotion_keys`."""
    keys = promotion_keys(values, maximize)
    return np.lexsort((keys[:, 1], keys[:, 0]))


def top_k_with_ties(values: np.ndarray, maximize: Sequence[bool], k: int) -> np.ndarray:
    """Mask of the best `k` rows by `promotion_keys`, plus every row tied with the k-th: both
    extremes of a front have infinite crowding distance, and the cheap extreme must not lose to
    the expensive one just because it arrived later. Fronts before the k-th row's are promoted
    whole and later ones not at all, so crowding is computed for the k-th row's front only."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return np.zeros(0, dtype=bool)
    k = min(max(k, 1), len(values))
    ranks = nondomination_rank(values, maximize, n_below=k)
    filled = np.cumsum(np.bincount(ranks))
    cut = int(np.searchsorted(filled, k))  # the front holding the k-th row
    promoted = ranks < cut
    members = np.flatnonzero(ranks == cut)
    spread = -crowding_distance(to_loss(values, maximize)[members])  # smaller is better
    needed = k - (int(filled[cut - 1]) if cut > 0 else 0)
    threshold = spread[np.lexsort((spread,))[needed - 1]]  # NaN sorts last, as in lexsort
    promoted[members[spread <= threshold]] = True
    return promoted


def hypervolume(values: np.ndarray, maximize: Sequence[bool], reference: Sequence[float]) -> float:
    """Hypervolume dominated by `values` up to `reference` (in the objectives' own units)."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return 0.0
    loss = to_loss(values, maximize)
    ref = to_loss(np.asarray([reference], dtype=float), maximize)[0]
    inside = np.all(loss < ref, axis=1)
    if not inside.any():
        return 0.0
    return float(compute_hypervolume(loss[inside], ref))
