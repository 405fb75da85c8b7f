"""From a mixing matrix to a static communication schedule of full permutations.

``mix(x) = Σ_j W_ij x_j`` runs as ``W_ii x_i`` plus one ``ppermute`` per round, each round a
full permutation of the workers (``vmap`` can only batch full permutations) with a weight per
receiver (0 where the round's edge is not in the graph). Two decompositions are tried and the
one with fewer rounds wins: grouping the edges by shift ``(j − i) mod n`` (optimal for circulant
graphs: ring, exponential), and a proper edge colouring of the bipartite sender/receiver graph,
which needs exactly Δ rounds (König), Δ the largest in- or out-degree (star, torus, random).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Round(NamedTuple):
    """One ppermute: ``perm`` as (source, destination) pairs, ``weights[i]`` the weight receiver
    i puts on what it gets."""

    perm: tuple[tuple[int, int], ...]
    weights: tuple[float, ...]


class Schedule(NamedTuple):
    """``mix(x)_i = self_weights[i] * x_i + Σ_r rounds[r].weights[i] * ppermute_r(x)_i``."""

    self_weights: tuple[float, ...]
    rounds: tuple[Round, ...]


def _edges(w: np.ndarray) -> list[tuple[int, int]]:
    """Directed edges (sender j, receiver i) for the off-diagonal non-zeros W_ij."""
    recv, send = np.nonzero(w)
    return [(int(j), int(i)) for i, j in zip(recv, send, strict=True) if i != j]


def _by_shift(n: int, edges) -> list[dict[int, int]]:
    shifts: dict[int, dict[int, int]] = {}
    for j, i in edges:
        shifts.setdefault((j - i) % n, {})[i] = j
    return [shifts[d] for d in sorted(shifts)]


def _by_colouring(n: int, edges) -> list[dict[int, int]]:
    """Bipartite edge colouring with Δ colours by alternating-path recolouring."""
    at_send: list[dict[int, int]] = [{} for _ in range(n)]  # colour -> receiver
    at_recv: list[dict[int, int]] = [{} for _ in range(n)]  # colour -> sender

    def free(used: dict[int, int]) -> int:
        c = 0
        while c in used:
            c += 1
        return c

    for j, i in edges:
        a, b = free(at_send[j]), free(at_recv[i])
        if a in at_recv[i]:
            # Swap colours a and b along the path from receiver i that alternates a, b, a, ...
            # It cannot reach sender j (bipartite parity), so afterwards a is free at both ends.
            path, node, side, colour = [], i, "recv", a
            while True:
                table = at_recv if side == "recv" else at_send
                if colour not in table[node]:
                    break
                other = table[node][colour]
                path.append((node, other, side, colour))
                node, side = other, ("send" if side == "recv" else "recv")
                colour = b if colour == a else a
            for u, v, s, c in path:  # remove, then re-add with the other colour
                (at_recv if s == "recv" else at_send)[u].pop(c, None)
                (at_send if s == "recv" else at_recv)[v].pop(c, None)
            for u, v, s, c in path:
                c2 = b if c == a else a
                (at_recv if s == "recv" else at_send)[u][c2] = v
                (at_send if s == "recv" else at_recv)[v][c2] = u
        at_send[j][a] = i
        at_recv[i][a] = j
    colours = sorted({c for table in at_recv for c in table})
    return [{i: at_recv[i][c] for i in range(n) if c in at_recv[i]} for c in colours]


def _complete(n: int, matching: dict[int, int]) -> tuple[tuple[int, int], ...]:
    """A full permutation containing the partial matching ``receiver -> sender``."""
    senders = set(matching.values())
    idle_send = [j for j in range(n) if j not in senders]
    idle_recv = [i for i in range(n) if i not in matching]
    full = dict(matching) | dict(zip(idle_recv, idle_send, strict=True))
    return tuple(sorted((j, i) for i, j in full.items()))


def make_schedule(w: np.ndarray) -> Schedule:
    """The fewest-rounds schedule (see module docstring) for mixing matrix ``w``."""
    w = np.asarray(w, dtype=np.float64)
    n = w.shape[0]
    edges = _edges(w)
    matchings = min(_by_shift(n, edges), _by_colouring(n, edges), key=len)
    rounds = []
    for matching in matchings:
        weights = tuple(float(w[i, matching[i]]) if i in matching else 0.0 for i in range(n))
        rounds.append(Round(_complete(n, matching), weights))
    return Schedule(tuple(float(x) for x in np.diag(w)), tuple(rounds))


def schedule_matrix(schedule: Schedule) -> np.ndarray:
    """The dense matrix a schedule computes (for checking a schedule against its W)."""
    w = np.diag(np.asarray(schedule.self_weights))
    for perm, weights in schedule.rounds:
        for src, dst in perm:
            w[dst, src] += weights[dst]
    return w
