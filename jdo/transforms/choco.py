"""CHOCO-SGD: decentralized SGD with compressed gossip."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jdo import checks
from jdo._axis import WORKERS
from jdo.comm.gossip import mix
from jdo.compress import Compressor, check_compressor, compress_tree, decompress_tree
from jdo.topology import Topology, check_topology
from jdo.transforms.compressed import worker_key


class ChocoState(NamedTuple):
    public: Any  # x̂_i: this worker's public copy, known to its neighbours
    neighbours: Any  # s_i = Σ_j W_ij x̂_j, kept up to date from the received compressed changes
    count: jax.Array


def choco(
    topology: Topology,
    compressor: Compressor,
    *,
    gamma: float = 0.01,
    seed: int = 0,
    axis_name: str = WORKERS,
) -> optax.GradientTransformation:
    r"""CHOCO gossip after the local step (Koloskova, Stich & Jaggi 2019, "Decentralized
    Stochastic Optimization and Gossip Algorithms with Compressed Communication").

    Placed last in a chain after the local optimizer's update :math:`u_i`
    (``optax.chain(optax.sgd(0.1), jdo.transforms.choco(topo, jdo.compress.top_k(0.01)))``),
    with public copies :math:`\hat x_j` that every neighbour tracks:

    .. math:: x_i^{+} = x_i + u_i, \quad q_i = \mathcal{C}(x_i^{+} - \hat x_i), \quad
              \hat x_j \leftarrow \hat x_j + \mathcal{D}(q_j), \quad
              x_i \leftarrow x_i^{+} + \gamma \textstyle\sum_j W_{ij}(\hat x_j - \hat x_i).

    Only the payloads :math:`q_j` travel, one per ppermute round of the topology. Each worker
    keeps :math:`s_i = \sum_j W_{ij}\hat x_j` (updated with the mixed decompressed payloads)
    instead of a copy per neighbour. With the identity compressor and ``gamma=1`` this is
    exact gossip. The consensus step ``gamma`` must shrink as compression gets coarser (the
    paper's theory: :math:`\gamma = O(\delta\rho^2)` for a δ-contractive compressor and
    spectral gap ρ). The default 0.01 is for 1% sparsification on a ring: with Adam on
    digits/MLP (8 workers, 1000 steps), top-1% diverges at γ = 0.5 and 0.2 (train loss 1.3e27,
    1.7e5) and converges at 0.1 and 0.05 (0.007); random-1% diverges at 0.05 (1.7e7), stalls
    at 0.02 (0.027) and converges at 0.01 (0.003, as top-1% does). The compressor must be
    contractive (``top_k``, ``random_k(scale=False)``, casts).
    """
    check_topology("topology", topology, ("doubly",), purpose="choco")
    if topology.period != 1:
        raise checks.InvalidArgument(
            "topology",
            f"must be static for choco: {topology!r} changes every step, and the "
            "neighbour sum s_i = Σ_j W_ij x̂_j is kept incrementally, which holds for a fixed W",
        )
    check_compressor("compressor", compressor, contractive_for="choco")
    checks.number("gamma", gamma, low=0, high=1, low_open=True)
    checks.integer("seed", seed)

    def init_fn(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return ChocoState(zeros, zeros, jnp.zeros((), jnp.int32))

    def update_fn(updates, state, params=None):
        if params is None:
            raise checks.InvalidArgument(
                "params", "is required by choco: call update(updates, state, params)"
            )
        local = optax.apply_updates(params, updates)  # x^+ = x + u
        change = jax.tree.map(jnp.subtract, local, state.public)
        payloads = compress_tree(compressor, change, worker_key(seed, state.count, axis_name))
        decode = lambda p: decompress_tree(compressor, p, change)
        public = jax.tree.map(jnp.add, state.public, decode(payloads))
        received = mix(payloads, topology, state.count, axis_name, decode=decode)
        neighbours = jax.tree.map(jnp.add, state.neighbours, received)
        new = jax.tree.map(
            lambda x, s, h: x + gamma * (s - h), local, neighbours, public
        )  # Σ_j W_ij (x̂_j − x̂_i) = s_i − x̂_i
        return (
            jax.tree.map(lambda n, p: (n - p).astype(p.dtype), new, params),
            ChocoState(public, neighbours, state.count + 1),
        )

    return optax.GradientTransformation(init_fn, update_fn)
