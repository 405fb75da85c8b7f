r"""Byzantine workers: what f of the W workers send instead of their honest update.

A model attack is a pure function of the stacked honest updates ``xs: [W, ...]`` (a pytree)
and the static Byzantine mask: it returns ``xs`` with the Byzantine rows replaced, so
:func:`jdo.transforms.robust_all_reduce` applies it right after its all-gather. The attackers
are omniscient, as the papers assume: ALIE, IPM and sign flipping use the honest workers'
statistics (mean :math:`\mu`, coordinate-wise standard deviation :math:`\sigma`, population
form, over the honest rows only), per coordinate of every leaf.

==================  ==========================================================  ============
attack              a Byzantine worker sends                                     reference
==================  ==========================================================  ============
``sign_flip()``     :math:`-\mu`                                                 ByzFL
``gaussian(std)``   :math:`\mathcal{N}(0, \text{std}^2)` per coordinate          ByzFL
``alie(z)``         :math:`\mu - z\,\sigma`                                      Baruch 2019
``ipm(eps)``        :math:`-\varepsilon\,\mu`                                    Xie 2020
``label_flip()``    its honest update, computed on labels ``C − 1 − y``          ByzFL
==================  ==========================================================  ============

``label_flip`` is a data attack: the update is left alone and the Byzantine workers train on
flipped labels. The runner flips them once in those workers' training parts
(:func:`jdo.train.builder.poison`); in one's own loop, flip them in the per-worker loss with
:meth:`Byzantine.labels` (``labels = faults.labels(y, num_classes,
jdo.comm.worker_index())``; the identity for every other attack and every honest worker).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jdo import checks
from jdo.system.stragglers import draw_key


def alie_z(num_workers: int, f: int) -> float:
    r"""Baruch et al. 2019's :math:`z_{\max}`: with :math:`s = \lfloor W/2 + 1 \rfloor - f`
    workers the attackers must win over, :math:`z = \Phi^{-1}((W - s) / W)`."""
    s = math.floor(num_workers / 2 + 1) - f
    if s < 1:
        raise checks.InvalidArgument(
            "attack",
            f"alie(z=None): f={f} Byzantine of {num_workers} workers already hold a majority "
            "(s = floor(W/2 + 1) - f < 1): give z explicitly",
        )
    return statistics.NormalDist().inv_cdf((num_workers - s) / num_workers)


def _honest_stats(leaf: jax.Array, honest: np.ndarray):
    rows = leaf[np.flatnonzero(honest)].astype(jnp.float32)
    mu = rows.mean(axis=0)
    return mu, jnp.sqrt(jnp.mean(jnp.square(rows - mu), axis=0))


def _replace(leaf: jax.Array, byzantine: np.ndarray, forged: jax.Array) -> jax.Array:
    mask = jnp.asarray(byzantine).reshape((-1,) + (1,) * (leaf.ndim - 1))
    return jnp.where(mask, jnp.broadcast_to(forged, leaf.shape).astype(leaf.dtype), leaf)


@dataclasses.dataclass(frozen=True)
class Attack:
    """What a Byzantine worker sends: ``forge(leaf, honest, (key, step), leaf_index)`` returns
    the forged ``[W, ...]`` (or broadcastable) values of one leaf; rows of honest workers are
    ignored."""

    name = "attack"
    is_data_attack = False

    def forge(self, leaf, honest: np.ndarray, key, index: int):
        raise NotImplementedError

    def check(self, num_workers: int, f: int) -> None:
        """Raises if the attack cannot run with ``f`` of ``num_workers`` Byzantine."""


@dataclasses.dataclass(frozen=True)
class SignFlip(Attack):
    name = "sign_flip"

    def forge(self, leaf, honest, key, index):
        return -_honest_stats(leaf, honest)[0]


@dataclasses.dataclass(frozen=True)
class Gaussian(Attack):
    std: float
    name = "gaussian"

    def forge(self, leaf, honest, key, index):
        keys = jax.vmap(lambda w: jax.random.fold_in(draw_key(key[0], w, key[1]), index))(
            jnp.arange(leaf.shape[0])
        )
        draw = lambda k: jax.random.normal(k, leaf.shape[1:], jnp.float32)
        return self.std * jax.vmap(draw)(keys)


@dataclasses.dataclass(frozen=True)
class ALIE(Attack):
    z: float | None = None
    name = "alie"

    def forge(self, leaf, honest, key, index):
        z = self.z if self.z is not None else alie_z(len(honest), int((~honest).sum()))
        mu, sigma = _honest_stats(leaf, honest)
        return mu - jnp.float32(z) * sigma

    def check(self, num_workers, f):
        if self.z is None:
            alie_z(num_workers, f)


@dataclasses.dataclass(frozen=True)
class IPM(Attack):
    eps: float
    name = "ipm"

    def forge(self, leaf, honest, key, index):
        return -jnp.float32(self.eps) * _honest_stats(leaf, honest)[0]


@dataclasses.dataclass(frozen=True)
class LabelFlip(Attack):
    name = "label_flip"
    is_data_attack = True

    def forge(self, leaf, honest, key, index):
        return leaf


def sign_flip() -> SignFlip:
    r"""Each Byzantine worker sends :math:`-\mu`, the negated mean of the honest updates
    (ByzFL's SignFlipping; Allen-Zhu et al. 2021 flip their own gradient)."""
    return SignFlip()


def gaussian(std: float) -> Gaussian:
    r"""Each Byzantine worker sends noise :math:`\mathcal{N}(0, \text{std}^2)` per coordinate,
    drawn from ``fold_in(fold_in(key(seed), worker), step)`` folded with the leaf's index
    (``seed``: :func:`byzantine`'s)."""
    return Gaussian(checks.positive("std", std))


def alie(z: float | None = None) -> ALIE:
    r"""A Little Is Enough (Baruch, Baruch & Goldberg 2019, NeurIPS): every Byzantine worker
    sends :math:`\mu - z\,\sigma`, small enough per coordinate to pass as honest. With
    ``z=None``, :math:`z_{\max} = \Phi^{-1}((W - s)/W)`, :math:`s = \lfloor W/2 + 1\rfloor - f`
    (:func:`alie_z`)."""
    if z is not None:
        z = checks.number("z", z)
    return ALIE(z)


def ipm(eps: float) -> IPM:
    r"""Inner Product Manipulation (Xie, Koyejo & Gupta 2020, "Fall of Empires", UAI): every
    Byzantine worker sends :math:`-\varepsilon\,\mu`, so the aggregate's inner product with the
    true gradient turns negative when ε is large enough (ε = 0.1 fools Krum and the median,
    ε = 100 the mean)."""
    return IPM(checks.positive("eps", eps))


def label_flip() -> LabelFlip:
    """A data attack: each Byzantine worker trains on labels ``C − 1 − y`` (a permutation of the
    C classes; ByzFL's LabelFlipping) and sends its honest update for them."""
    return LabelFlip()


ATTACKS: dict[str, Callable[..., Attack]] = {
    "sign_flip": sign_flip,
    "gaussian": gaussian,
    "alie": alie,
    "ipm": ipm,
    "label_flip": label_flip,
}


def flip_labels(labels, num_classes: int):
    """``C − 1 − y``: the label flipping attack's permutation of the classes."""
    return (num_classes - 1 - jnp.asarray(labels)).astype(jnp.asarray(labels).dtype)


@dataclasses.dataclass(frozen=True)
class Byzantine:
    """``workers`` send ``attack`` instead of their honest update (see :func:`byzantine`)."""

    workers: tuple[int, ...]
    attack: Attack
    seed: int = 0

    @property
    def f(self) -> int:
        return len(self.workers)

    def mask(self, num_workers: int) -> np.ndarray:
        """``[W]`` bool: which workers are Byzantine."""
        self.check(num_workers)
        return np.isin(np.arange(num_workers), self.workers)

    def check(self, num_workers: int) -> None:
        if max(self.workers) >= num_workers:
            raise checks.InvalidArgument(
                "workers",
                f"lists worker {max(self.workers)} but there are {num_workers} workers",
            )
        if self.f >= num_workers:
            raise checks.InvalidArgument(
                "workers", f"leaves no honest worker ({self.f} of {num_workers} are Byzantine)"
            )
        self.attack.check(num_workers, self.f)

    def corrupt(self, xs, step):
        """The stacked updates ``xs: [W, ...]`` (pytree) with the Byzantine rows replaced by the
        attack at ``step`` (an int, traced or not)."""
        leaves, treedef = jax.tree.flatten(xs)
        bad = self.mask(leaves[0].shape[0])
        key = (jax.random.key(self.seed), jnp.asarray(step, jnp.int32))
        forged = [
            _replace(leaf, bad, self.attack.forge(leaf, ~bad, key, i))
            for i, leaf in enumerate(leaves)
        ]
        return jax.tree.unflatten(treedef, forged)

    def labels(self, labels, num_classes: int, worker):
        """This worker's training labels: flipped (``C − 1 − y``) when the attack is
        ``label_flip`` and ``worker`` (an int, traced or not) is Byzantine; else unchanged."""
        if not self.attack.is_data_attack:
            return labels
        bad = jnp.any(jnp.asarray(worker) == jnp.asarray(self.workers, jnp.int32))
        return jnp.where(bad, flip_labels(labels, num_classes), labels)


def byzantine(workers: Sequence[int], attack, seed: int = 0) -> Byzantine:
    """Byzantine ``workers`` running ``attack``: an attack (``jdo.faults.alie()``,
    ``gaussian(0.1)``), a factory taking no argument (``jdo.faults.sign_flip``) or its name
    (``"sign_flip"``, ``"alie"``, ``"label_flip"``). Pass it to
    ``jdo.transforms.robust_all_reduce(aggregator, faults=...)``.

    Args:
      workers: the Byzantine workers' indices (``>= 0``).
      attack: see above and the module docstring.
      seed: for random attacks (gaussian): worker w draws from
        ``fold_in(fold_in(key(seed), w), step)`` folded with the leaf's index.
    """
    workers = checks.int_sequence("workers", workers, minimum=0, allow_empty=False)
    if isinstance(attack, str):
        checks.one_of("attack", attack, [k for k in ATTACKS if k not in ("gaussian", "ipm")])
        attack = ATTACKS[attack]()
    elif callable(attack) and not isinstance(attack, Attack):
        attack = attack()
    if not isinstance(attack, Attack):
        raise checks.WrongType(
            "attack",
            f"must be a jdo.faults attack ({', '.join(ATTACKS)}), got {type(attack).__name__}",
        )
    return Byzantine(tuple(sorted(set(workers))), attack, checks.integer("seed", seed))
