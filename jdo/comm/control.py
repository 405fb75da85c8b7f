"""Control flow around collectives: ``jax.lax``'s ``cond``, ``switch``, ``fori_loop`` and
``scan`` that carry a running simulated clock (:mod:`jdo.system.clock`) through their branches
and iterations, so a branch that communicates advances it and one that does not leaves it.
With no clock running they are ``jax.lax``'s own. Use them whenever a collective from
:mod:`jdo.comm` sits inside control flow."""

from jdo.system.clock import cond, fori_loop, scan, switch

__all__ = ["cond", "fori_loop", "scan", "switch"]
