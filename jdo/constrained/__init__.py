"""Constrained and ADMM optimization: consensus and decentralized ADMM, Lagrangian methods."""

from jdo.constrained import constraints, prox
from jdo.constrained.admm import (
    ADMMState,
    DecentralizedADMMState,
    consensus_admm,
    decentralized_admm,
    gradient_solver,
    newton_solver,
)
from jdo.constrained.lagrangian import (
    LagrangianState,
    augmented_lagrangian,
    lagrangian,
    quadratic_penalty,
)

__all__ = [
    "ADMMState",
    "DecentralizedADMMState",
    "LagrangianState",
    "augmented_lagrangian",
    "consensus_admm",
    "constraints",
    "decentralized_admm",
    "gradient_solver",
    "lagrangian",
    "newton_solver",
    "prox",
    "quadratic_penalty",
]
