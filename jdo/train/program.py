"""The compiled side of a run: the per-worker step, lifted over the workers, jitted as a
chunk of up to K steps, plus ``init`` and evaluation, and the bytes a step sends.

This is the one place where per-step extensions enter the loop: :func:`worker_step` runs
``algorithm.step`` for one worker on one step; ``fit(..., clock=..., wrappers=...)`` hands in
functions ``Algorithm -> Algorithm`` that wrap the algorithm before it is lifted: the simulated
cluster's clock first (:func:`jdo.train.clocked.with_clock`: its state rides in the algorithm
state, its collectives are left out of the byte count), then fault masks or an asynchrony
schedule, the way :func:`jdo.train.guard.guard_nonfinite` (applied last, outermost) checks
every step. Everything here is pure and traced; the host side is in
:mod:`jdo.train.loop`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jdo import comm, system
from jdo._axis import NODES
from jdo.algorithms import Algorithm
from jdo.data import sample_batch
from jdo.lifting import lift, worker_spec
from jdo.system.clock import unwrap
from jdo.train.config import ConfigError
from jdo.train.evaluate import make_evaluate
from jdo.train.experiment import Experiment
from jdo.train.guard import all_finite
from jdo.train.mesh import make_mesh
from jdo.worker_map import NoPerWorkerCompute


def worker_mesh(workers: int, lifting: str, devices: int, nodes: int = 1) -> Mesh:
    """shard_map: one worker per device (two-level, ``(nodes, local)``, with ``nodes > 1``);
    vmap, hybrid: the worker axis spread over ``devices``."""
    if lifting == "shard_map":
        return make_mesh(workers, nodes=nodes)
    if workers % devices or devices > jax.device_count():
        raise ValueError(
            f"the {lifting} lifting spreads workers={workers} over devices={devices}: devices "
            f"must divide workers and be <= {jax.device_count()}"
        )
    return make_mesh(devices)


def mesh_nodes(mesh: Mesh) -> int:
    """The nodes of a two-level ``(nodes, local)`` worker mesh; 1 for a 1-D one."""
    return int(mesh.shape[NODES]) if NODES in mesh.axis_names else 1


def place(tree, sharding):
    """Host arrays (the same on every process) -> global arrays with ``sharding``."""
    return jax.tree.map(
        lambda x: jax.make_array_from_callback(np.shape(x), sharding, lambda i: np.asarray(x)[i]),
        tree,
    )


def worker_step(algo: Algorithm, batch_size: int | None, state, data, key, t):
    """One step of one worker: its batch and step key come from ``fold_in(fold_in(key,
    worker), t)``, so a resumed run draws exactly what an uninterrupted one would."""
    k = jax.random.fold_in(jax.random.fold_in(key, comm.worker_index()), t)
    batch_key, step_key = jax.random.split(k)
    batch = sample_batch(*data, batch_key, batch_size) if data else None
    return algo.step(state, batch, step_key)


def worker_chunk(
    step: Callable, length: int, metric_shapes, check_state: bool, varying: bool = False
):
    """``chunk(state, data, key, step0, n) -> (state, metrics, finite)``: ``n <= length`` steps
    from ``step0`` (``n`` is traced: one compiled chunk runs any number of steps, so the host
    can bound a call's wall time without recompiling). ``metrics``: each ``[length]``, the
    first ``n`` valid. ``finite``: the new state holds no NaN/inf (checked once per call, not
    per step; True when ``check_state`` is off). ``varying``: under ``shard_map`` the metric
    buffers differ per worker from the start (their type must match the loop's output)."""

    def chunk(state, data, key, step0, n):
        buffers = jax.tree.map(lambda s: jnp.zeros((length, *s.shape), s.dtype), metric_shapes)
        if varying:
            buffers = comm.varying(buffers)

        def body(i, carry):
            state, buffers = carry
            state, metrics = step(state, data, key, step0 + i)
            buffers = jax.tree.map(lambda b, v: b.at[i].set(v), buffers, metrics)
            return state, buffers

        state, buffers = jax.lax.fori_loop(0, n, body, (state, buffers))
        finite = all_finite(state) if check_state else jnp.asarray(True)
        return state, buffers, finite

    return chunk


def member_step(step: Callable, batch_size: int | None, state, data, key, t, worker):
    """:func:`worker_step` for a cohort member whose global index ``worker`` is given (the
    cohort's own axis index is its position in the cohort): the same draws as under the
    plain lifting."""
    k = jax.random.fold_in(jax.random.fold_in(key, worker), t)
    batch_key, step_key = jax.random.split(k)
    batch = sample_batch(*data, batch_key, batch_size) if data else None
    return step(state, batch, step_key)


def _spread(metrics, idx, workers: int):
    """Cohort metrics ``[S]`` as ``[W]``: the members' own values, the others get the
    members' mean (so means over W are means over the cohort; flags: False)."""

    def one(m):
        fill = jnp.zeros((), m.dtype) if m.dtype == bool else jnp.mean(m).astype(m.dtype)
        return jnp.full((workers, *m.shape[1:]), fill, m.dtype).at[idx].set(m)

    return jax.tree.map(one, metrics)


def cohort_chunk(algo: Algorithm, batch_size, workers: int, length: int, check_state, lifted):
    """Like :func:`worker_chunk`, lifted, for an algorithm with a
    :class:`~jdo.algorithms.Cohort`: each step gathers the round's S members' state and data
    (``[S, ...]``), runs ``cohort.step`` on them only (``lifted``: the vmap lifting; its
    collectives span the S members), scatters them back, and after a round's last step the
    other workers adopt the global state (DrJAX, Rush et al. 2024; FedJAX's sampled
    rounds). Metrics: ``[W, length]`` (:func:`_spread`)."""
    cohort = algo.cohort
    step = lifted(
        functools.partial(member_step, cohort.step, batch_size), in_axes=(0, 0, None, None, 0)
    )

    def one_step(states, data, key, t):
        idx = cohort.members(t, workers)
        take = lambda tree: jax.tree.map(lambda x: x[idx], tree)
        sub, metrics = step(take(states), take(data), key, t, idx)
        states = jax.tree.map(lambda x, s: x.at[idx].set(s), states, sub)

        def adopt(states):
            member = jax.tree.map(lambda x: x[idx[0]], states)
            adopted = jax.vmap(lambda own: cohort.adopt(member, own))(states)
            is_member = jnp.zeros((workers,), bool).at[idx].set(True)
            keep = lambda a, b: jnp.where(is_member.reshape(-1, *[1] * (a.ndim - 1)), a, b)
            return jax.tree.map(keep, states, adopted)

        ends = (t + 1) % cohort.period == 0
        states = jax.lax.cond(ends, adopt, lambda s: s, states)
        return states, _spread(metrics, idx, workers)

    def chunk(states, data, key, step0, n):
        shapes = jax.eval_shape(one_step, states, data, key, step0)[1]
        buffers = jax.tree.map(lambda s: jnp.zeros((*s.shape, length), s.dtype), shapes)

        def body(i, carry):
            states, buffers = carry
            states, metrics = one_step(states, data, key, step0 + i)
            buffers = jax.tree.map(lambda b, v: b.at[:, i].set(v), buffers, metrics)
            return states, buffers

        states, buffers = jax.lax.fori_loop(0, n, body, (states, buffers))
        finite = all_finite(states) if check_state else jnp.asarray(True)
        return states, buffers, jnp.broadcast_to(finite, (workers,))

    return chunk


@dataclasses.dataclass(frozen=True)
class Program:
    """What the loop calls: jitted and compiled functions over the stacked ``[W, ...]`` state,
    with the mesh and shardings they use and the bytes one step sends per worker."""

    mesh: Mesh
    per_worker: NamedSharding
    replicated: NamedSharding
    init: Callable  # init(params, keys[W]) -> state
    init_per_worker: Callable  # init(params[W], keys[W]) -> state (elastic regrouping)
    params_of: Callable  # state -> params[W]
    chunk: Callable  # see worker_chunk; compiled by compile()
    evaluate: Callable | None = None  # evaluate(state, key) -> metrics; compiled by compile()
    step_bytes: dict = dataclasses.field(default_factory=dict)  # wire bytes by kind
    bytes_per_step: int = 0  # wire bytes of a step that communicates
    quiet_bytes: int = 0  # wire bytes of the other steps
    payload_by_kind: dict = dataclasses.field(default_factory=dict)  # operand bytes by kind
    payload_per_step: int = 0
    lift: Callable | None = None  # the run's lifting: lift(fn, in_axes=...) -> stacked fn
    device_bytes: int = 0  # bytes/step_device: what one device sends per step in this run
    cohort_size: int | None = None  # sampled participation: the S workers a step computes


def uses_cohort(algo: Algorithm, lifting: str, devices: int) -> bool:
    """Sampled participation computes only the sampled workers under the vmap lifting on one
    device (a gather of the cohort); elsewhere every worker computes, masked."""
    return algo.cohort is not None and lifting == "vmap" and devices == 1


def _one_worker(tree):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), tree)


def make_program(
    exp: Experiment,
    algo: Algorithm,
    *,
    workers: int,
    lifting: str,
    devices: int,
    batch_size: int | None,
    length: int,
    check_state: bool,
    chunk: int | None = None,
    map: str = "vmap",  # noqa: A002 - lifting.map
    nodes: int = 1,
) -> Program:
    """Lifts and jits ``algo`` (already wrapped) for ``workers`` workers; nothing compiles
    yet (see :func:`compile_program`). ``chunk``, ``map``: how the vmap lifting evaluates
    the step's per-worker compute (:mod:`jdo.worker_map`; init and evaluation: plain).
    ``nodes``: the shard_map lifting's two-level mesh."""
    mesh = worker_mesh(workers, lifting, devices, nodes)
    per_worker, replicated = NamedSharding(mesh, worker_spec(mesh)), NamedSharding(mesh, P())
    lift_ = functools.partial(lift, lifting=lifting, mesh=mesh if lifting != "vmap" else None)
    step = functools.partial(worker_step, algo, batch_size)
    stacked_step = lift_(step, in_axes=(0, 0, None, None))
    one_step_shapes = lambda state, data, key: jax.eval_shape(
        stacked_step, state, data, key, jnp.int32(0)
    )[1]

    mapped = functools.partial(lift_, chunk=chunk, map=map) if lifting == "vmap" else lift_

    def run_chunk(state, data, key, step0, n):
        shapes = _one_worker(one_step_shapes(state, data, key))
        body = worker_chunk(step, length, shapes, check_state, lifting == "shard_map")
        return mapped(body, in_axes=(0, 0, None, None, None))(state, data, key, step0, n)

    cohort_size = algo.cohort.size(workers) if uses_cohort(algo, lifting, devices) else None
    if cohort_size is not None:
        run_chunk = cohort_chunk(algo, batch_size, workers, length, check_state, mapped)

    return Program(
        mesh=mesh,
        per_worker=per_worker,
        replicated=replicated,
        init=jax.jit(lift_(algo.init, in_axes=(None, 0)), out_shardings=per_worker),
        init_per_worker=jax.jit(lift_(algo.init, in_axes=(0, 0)), out_shardings=per_worker),
        params_of=jax.jit(jax.vmap(algo.params)),
        # metrics and flags replicated: every process of a multi-process run reads them all
        chunk=jax.jit(
            run_chunk, donate_argnums=0, out_shardings=(per_worker, replicated, replicated)
        ),
        lift=lift_,
        cohort_size=cohort_size,
    )


def compile_program(
    program: Program,
    exp: Experiment,
    algo: Algorithm,
    state,
    data,
    key,
    *,
    workers: int,
    batch_size: int | None,
    eval_batch_size: int,
    cluster=None,
) -> Program:
    """Compiles the chunk and the evaluation for ``state``'s shapes and counts one step's
    bytes per worker from the lowered HLO of ``algo`` (unclocked): wire bytes under
    ``cluster``'s collective algorithm (ring without one) and operand bytes (payload), for a
    step that communicates and (``quiet_bytes``) the other steps of algorithms that
    communicate on some steps only. With a sampled cohort: a participant's bytes among the
    S workers of its round (the others send nothing)."""
    step0 = jnp.zeros((), jnp.int32)
    try:
        chunk = compile_chunk(program.chunk.lower(state, data, key, step0, step0))
    except NoPerWorkerCompute as e:
        raise ConfigError("lifting", str(e)) from None
    if program.cohort_size is not None:  # a participant's traffic, among the S of its round
        algo, workers = algo._replace(step=algo.cohort.step), program.cohort_size
    hlo = comm.worker_hlo(  # lowered once, read for both bounds
        functools.partial(worker_step, algo, batch_size),
        workers,
        _one_worker(unwrap(state)),  # the algorithm's own state: the clock is not traffic
        _one_worker(data),
        key,
        step0,
        in_axes=(0, 0, None, None),
        platform=jax.default_backend(),
        nodes=mesh_nodes(program.mesh) if program.cohort_size is None else 1,
    )
    ops = lambda conditionals: comm.hlo_collective_ops(hlo, conditionals, num_devices=workers)
    wire, payload = step_traffic(ops("max"), cluster)
    quiet, _ = step_traffic(ops("min"), cluster)
    evaluate = make_state_evaluate(exp, program, eval_batch_size)
    evaluate = evaluate.lower(state, key).compile()
    device = device_bytes(
        program, functools.partial(worker_step, algo, batch_size), state, data, key
    )
    return dataclasses.replace(
        program,
        chunk=chunk,
        evaluate=evaluate,
        step_bytes=wire,
        bytes_per_step=sum(wire.values()),
        quiet_bytes=sum(quiet.values()),
        payload_by_kind=payload,
        payload_per_step=sum(payload.values()),
        device_bytes=device,
    )


# XLA's CPU backend (jax 0.10) fuses some elementwise work over the stacked state into YNNPACK
# kernels; for FedAvg (DiLoCo with a stateless outer SGD) at 256 digits-MLP workers that made a
# step 2.9 s instead of 53 ms (measured here, one device). The runner's chunk is compiled
# without those fusions on CPU (env var JDO_CPU_YNN_FUSION=1 keeps XLA's default).
CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def compile_chunk(lowered):
    """``lowered.compile()``, on CPU without XLA's YNNPACK fusions (:data:`CPU_OPTIONS`; a
    jaxlib that does not know the option compiles with its defaults)."""
    if jax.default_backend() != "cpu" or os.environ.get("JDO_CPU_YNN_FUSION") == "1":
        return lowered.compile()
    try:
        return lowered.compile(compiler_options=CPU_OPTIONS)
    except jax.errors.JaxRuntimeError as e:
        if "No such compile option" not in str(e):
            raise
        return lowered.compile()


def device_bytes(program: Program, step: Callable, state, data, key) -> int:
    """``bytes/step_device``: the bytes one device sends per step in this run, read from the
    compiled HLO of ``step`` (one worker's step, unclocked) lifted as the run lifts it, under
    ring collective algorithms (a device is not one of the cluster's workers). With one
    worker per device (shard_map) it matches ``bytes/step``; ``vmap`` on one device sends 0;
    ``vmap`` over D devices gathers whole stacked arrays, ``hybrid`` only what crosses."""
    if program.lift is None or program.mesh.size == 1:
        return 0
    per_worker, replicated = program.per_worker, program.replicated
    lifted = program.lift(step, in_axes=(0, 0, None, None))
    jitted = jax.jit(lifted, in_shardings=(per_worker, per_worker, replicated, replicated))
    hlo = jitted.lower(unwrap(state), data, key, jnp.zeros((), jnp.int32)).compile().as_text()
    wire, _ = step_traffic(comm.hlo_collective_ops(hlo))
    return sum(wire.values())


def step_traffic(ops, cluster=None) -> tuple[dict[str, int], dict[str, int]]:
    """``(wire, payload)`` bytes one worker sends per step, by collective kind, from the
    step's collective operations: wire bytes under ``cluster``'s collective algorithm (ring
    without one; :func:`jdo.system.wire_bytes`), payload the operands
    (``CollectiveOp.payload_bytes``)."""
    wire, payload = dict.fromkeys(comm.KINDS, 0), dict.fromkeys(comm.KINDS, 0)
    for op in ops:
        wire[op.kind] += round(system.wire_bytes(op, cluster) * op.count)
        payload[op.kind] += op.payload_bytes * op.count
    return wire, payload


def make_state_evaluate(exp: Experiment, program: Program, eval_batch_size: int):
    """``evaluate(state, key)``: :func:`jdo.train.evaluate.make_evaluate` on the workers'
    params plus the experiment's own per-worker evaluation (``eval/<name>`` mean over workers
    and ``eval/<name>_min``)."""
    evaluate_params = make_evaluate(exp, eval_batch_size)
    per_worker = exp.evaluate_worker

    @functools.partial(jax.jit, out_shardings=program.replicated)
    def evaluate(state, key):
        out = evaluate_params(program.params_of(state))
        if per_worker is not None:
            keys = jax.random.split(key, jax.tree.leaves(state)[0].shape[0])
            values = jax.vmap(per_worker)(unwrap(state), keys)
            for name, v in values.items():
                out[f"eval/{name}"] = jnp.mean(v)
                out[f"eval/{name}_min"] = jnp.min(v)
        return out

    return evaluate
