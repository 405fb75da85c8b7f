"""Parameter-server training: synchronous and sharded inside SPMD, or asynchronous (simulated
on the cluster clock by :mod:`jdo.asynchrony`)."""

from __future__ import annotations

import optax

from jdo import checks
from jdo._axis import WORKERS
from jdo.algorithms.allreduce_sgd import from_transform
from jdo.algorithms.base import Algorithm, LossFn, register
from jdo.transforms.sharded import sharded_update

MODES = ("sync", "async", "ssp", "k_async")
# the argument a mode requires, and the arguments only the asynchronous modes take
_NEEDS = {"ssp": "staleness", "k_async": "k"}
_ASYNC_ONLY = ("staleness", "k", "lr_scaling", "dc_lambda")


@register("parameter_server")
def parameter_server(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    mode: str = "sync",
    staleness: int | None = None,
    cluster=None,
    *,
    k: int | None = None,
    lr_scaling: str | None = None,
    dc_lambda: float | None = None,
    axis_name: str = WORKERS,
    **rest,
) -> Algorithm:
    r"""Training with a parameter server: workers push gradients, servers update, workers pull.

    ``mode="sync"`` (built here): the server is sharded over the workers themselves
    (:func:`jdo.transforms.sharded_update`). Worker ``i`` serves shard ``i`` of the flattened
    parameters (``⌈P/W⌉`` entries, zero-padded) and owns the optimizer state of that shard
    only; a step reduce-scatters the gradients, updates the shard and all-gathers the updates:

    .. math:: \bar g_{[i]} = \frac{1}{W}\sum_{j=1}^{W} [\nabla f(x; \xi_j)]_i, \qquad
              (u_{[i]}, s_i) \leftarrow \mathrm{opt}(\bar g_{[i]}, s_i), \qquad
              x \leftarrow x + (u_{[1]}, \dots, u_{[W]}).

    With an element-wise optimizer this is :func:`allreduce_sgd` with the same optimizer (the
    same iterates to float rounding), the same wire bytes (a reduce-scatter plus an
    all-gather, each half a ring all-reduce) and 1/W of its optimizer-state memory per worker.

    ``mode="async" | "ssp" | "k_async"``: asynchronous SGD against a central server, simulated
    deterministically on the cluster clock (``cluster``): every gradient is computed on the
    parameter version its worker read; ``ssp`` bounds the progress gap to ``staleness`` (Ho
    et al. 2013), ``k_async`` applies every ``k`` arrivals; ``lr_scaling`` and ``dc_lambda``
    are the staleness-aware learning rate (Zhang et al. 2016) and DC-ASGD's delay
    compensation (Zheng et al. 2017). These modes are :func:`jdo.asynchrony.algorithm`,
    imported when asked for.

    References: Li et al. 2014, "Scaling Distributed Machine Learning with the Parameter
    Server" (OSDI); Jiang et al. 2020, "A Unified Architecture for Accelerating Distributed
    DNN Training in Heterogeneous GPU/CPU Clusters" (BytePS, OSDI); Rajbhandari et al. 2020,
    "ZeRO: Memory Optimizations Toward Training Trillion Parameter Models" (SC).

    Args:
      loss_fn: ``loss_fn(params, batch, key) -> (loss, metrics)`` for one worker's batch.
      optimizer: any optax transformation; under ``"sync"`` it sees one flat shard.
      mode: ``"sync"``, ``"async"``, ``"ssp"`` or ``"k_async"``.
      staleness: ``ssp``'s bound s (required there).
      cluster: the simulated cluster whose clock orders the asynchronous events (``"sync"``
        needs none: a run's clock prices its reduce-scatter and all-gather like any
        collective).
      k: ``k_async``'s arrivals per update (required there).
      lr_scaling, dc_lambda: asynchronous modes only (see above).
      axis_name: the workers' named axis.
      **rest: further arguments of :func:`jdo.asynchrony.algorithm`.

    Returns:
      An :class:`~jdo.algorithms.Algorithm`; under ``"sync"`` its state is
      :class:`~jdo.algorithms.TrainState` with a :class:`~jdo.transforms.ShardedState`.
    """
    checks.one_of("mode", mode, MODES)
    checks.optimizer("optimizer", optimizer)
    given = {"staleness": staleness, "k": k, "lr_scaling": lr_scaling, "dc_lambda": dc_lambda}
    needed = _NEEDS.get(mode)
    if needed is not None and given[needed] is None:
        raise checks.InvalidArgument(needed, f"is required with mode={mode!r}, got None")
    if mode != "sync":
        from jdo import asynchrony  # imported on demand: the simulated asynchrony layer

        return asynchrony.algorithm(
            loss_fn, optimizer, mode=mode, cluster=cluster, axis_name=axis_name, **given, **rest
        )
    for name in (*_ASYNC_ONLY, *rest):
        value = given.get(name, rest.get(name))
        if value is not None:
            raise checks.InvalidArgument(
                name,
                f"is taken by the asynchronous modes ({', '.join(MODES[1:])}), not "
                f"mode='sync'; got {value!r}",
            )
    return from_transform(loss_fn, sharded_update(optimizer, axis_name))
