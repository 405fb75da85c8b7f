"""In-run faults, drawn per (worker, step) and identical host-side and traced: lost links
(:func:`link_drop`), crashed and rejoining workers (:func:`node_crash`), and Byzantine workers
(:func:`byzantine` with an attack: :func:`sign_flip`, :func:`gaussian`, :func:`alie`,
:func:`ipm`, :func:`label_flip`). Host-side, pure and validated in their factories; they know
nothing of models. The transforms take them as ``faults=`` and count their own updates from 0:
the t-th update uses ``delivered(t, W)`` and ``alive(t, W)``.

    drop = jdo.faults.link_drop(0.1, seed=0)
    drop.delivered(step=3, num_workers=8)          # [8, 8] bool: [i, j] = j's message reached i
    tx = jdo.transforms.gossip(jdo.topology.ring(8), faults=drop)
    crash = jdo.faults.node_crash([3], at_step=100, rejoin_step=200)
    tx = optax.chain(optax.sgd(0.1), jdo.transforms.all_reduce(faults=[drop, crash]))
    tx = jdo.transforms.robust_all_reduce(
        jdo.aggregators.coordinate_median,
        faults=jdo.faults.byzantine([0, 1], jdo.faults.alie()),
    )
"""

from jdo.faults.byzantine import (
    ALIE,
    ATTACKS,
    IPM,
    Attack,
    Byzantine,
    Gaussian,
    LabelFlip,
    SignFlip,
    alie,
    alie_z,
    byzantine,
    flip_labels,
    gaussian,
    ipm,
    label_flip,
    sign_flip,
)
from jdo.faults.network import (
    Combined,
    LinkDrop,
    NetworkFault,
    NodeCrash,
    combine,
    is_directed,
    link_drop,
    network_faults,
    node_crash,
    rejoining,
)

__all__ = [
    "ALIE",
    "ATTACKS",
    "IPM",
    "Attack",
    "Byzantine",
    "Combined",
    "Gaussian",
    "LabelFlip",
    "LinkDrop",
    "NetworkFault",
    "NodeCrash",
    "SignFlip",
    "alie",
    "alie_z",
    "byzantine",
    "combine",
    "flip_labels",
    "gaussian",
    "ipm",
    "is_directed",
    "label_flip",
    "link_drop",
    "network_faults",
    "node_crash",
    "rejoining",
    "sign_flip",
]
