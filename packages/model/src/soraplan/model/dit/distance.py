"""Average attention distance of an attention pattern.

For two tokens, the distance is the least number of attention operations that carry information
from one to the other (0 for a token and itself). A model alternates two layer kinds, and the
residual stream lets information skip a layer, so a path may use the kinds in any order: the
distance is the shortest path in the graph whose edges join tokens sharing a set in either kind.
The average is over all ordered pairs of real tokens.

`average_distance` uses the closed form. In every mode here (with N >= k^2) any two tokens are
at most 2 apart, so with P_X = sum over sets of n(n-1) (ordered pairs sharing a set of kind X),
    avg = (2 N (N - 1) - P_A - P_B + P_AB) / N^2.
`bfs_average_distance` checks it by graph search on small grids.
"""

from __future__ import annotations

from collections import deque

import numpy as np
from soraplan.model.dit.attention import AttentionMode, Grid, LayerKind

MODE_KINDS: dict[AttentionMode, tuple[LayerKind, ...]] = {
    "full": ("full",),
    "spatial_temporal": ("spatial", "temporal"),
    "skip_window": ("skip", "window"),
    "skiparse": ("single_skip", "group_skip"),
}


def set_ids(kind: LayerKind, grid: Grid, k: int) -> np.ndarray:
    """The attention set of every flattened token, straight from each kind's definition."""
    t, h, w = grid
    i = np.arange(t * h * w)
    return {
        "full": np.zeros_like(i),
        "spatial": i // (h * w),
        "temporal": i % (h * w),
        "single_skip": i % k,
        "skip": i % k,
        "group_skip": (i // k) % k,
        "window": i // k,
    }[kind]


def bfs_average_distance(mode: AttentionMode, grid: Grid, k: int = 2) -> float:
    """Exact average by breadth-first search from every token (O(N^2); small grids only)."""
    n = int(np.prod(grid))
    members: list[dict[int, list[int]]] = []
    token_sets: list[np.ndarray] = []
    for kind in MODE_KINDS[mode]:
        ids = set_ids(kind, grid, k)
        groups: dict[int, list[int]] = {}
        for token, s in enumerate(ids.tolist()):
            groups.setdefault(s, []).append(token)
        members.append(groups)
        token_sets.append(ids)
    total = 0
    for source in range(n):
        dist = np.full(n, -1)
        dist[source] = 0
        seen_sets: list[set[int]] = [set() for _ in members]
        queue = deque([source])
        while queue:
            u = queue.popleft()
            for kind_index, groups in enumerate(members):
                s = int(token_sets[kind_index][u])
                if s in seen_sets[kind_index]:
                    continue
                seen_sets[kind_index].add(s)
                for v in groups[s]:
                    if dist[v] < 0:
                        dist[v] = dist[u] + 1
                        queue.append(v)
        if (dist < 0).any():
            raise ValueError(f"{mode} on {grid} with k={k} does not connect all tokens")
        total += int(dist.sum())
    return total / n**2


def _residue_counts(n: int, period: int) -> np.ndarray:
    """How many of 0..n-1 fall in each residue class mod `period`."""
    return np.maximum(0, -(-(n - np.arange(period)) // period))


def _pairs(counts: np.ndarray) -> int:
    counts = counts.astype(np.int64)
    return int((counts * (counts - 1)).sum())


def average_distance(mode: AttentionMode, grid: Grid, k: int = 2) -> float:
    """Closed-form average attention distance of `mode` on `grid` (sparse ratio k)."""
    t, h, w = grid
    n = t * h * w
    if mode == "full":
        return (n - 1) / n
    if mode == "spatial_temporal":
        # Sets: T frames of HW tokens, HW positions of T tokens; they meet in exactly one token.
        return (2 * n * (n - 1) - t * h * w * (h * w - 1) - h * w * t * (t - 1)) / n**2
    if n < k * k:
        raise ValueError(f"closed form needs at least k^2 = {k * k} tokens, got {n}")
    single = _residue_counts(n, k)
    both = _residue_counts(n, k * k)  # i mod k^2 fixes both i mod k and floor(i/k) mod k
    if mode == "skiparse":
        group = both.reshape(k, k).sum(axis=1)  # residue g*k + j belongs to group set g
        return (2 * n * (n - 1) - _pairs(single) - _pairs(group) + _pairs(both)) / n**2
    if mode == "skip_window":
        # Windows are k consecutive tokens (the last one maybe shorter): all residues differ, so
        # a window and a skip set share at most one token and P_AB = 0. Any token reaches any
        # full window's token of its own residue, so distances stay <= 2.
        windows = np.array([k] * (n // k) + ([n % k] if n % k else []))
        return (2 * n * (n - 1) - _pairs(single) - _pairs(windows)) / n**2
    raise ValueError(f"unknown attention mode {mode!r}")


def distance_table(grid: Grid, ks: list[int]) -> list[dict[str, float | int]]:
    """One row per k with the average distance of every mode."""
    return [
        {"k": k, **{mode: average_distance(mode, grid, k) for mode in MODE_KINDS}} for k in ks
    ]
