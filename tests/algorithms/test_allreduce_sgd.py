"""All-reduce SGD over W workers with batch b == one worker with batch W·b."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jdo
from jdo import checks

W, B, STEPS = 8, 4, 50


def _problem():
    apply, params = jdo.models.functional(jdo.models.MLP((64,), 10, hidden=(32,), rngs=nnx.Rngs(0)))
    loss_fn = jdo.data.make_loss(apply, "classification")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(STEPS, W, B, 64)).astype(np.float32)
    y = rng.integers(0, 10, size=(STEPS, W, B)).astype(np.int32)
    batches = {"x": x, "y": y, "weight": np.ones((STEPS, W, B), np.float32)}
    return loss_fn, params, batches


def _single_worker(optimizer):
    """The reference: the inner optimizer alone on the concatenated [W·B] batch."""
    loss_fn, params, batches = _problem()
    merged = jax.tree.map(lambda b: b.reshape(STEPS, W * B, *b.shape[3:]), batches)
    single = jdo.algorithms.allreduce_sgd(loss_fn, optimizer)  # W = 1
    step = jax.jit(jax.vmap(single.step, axis_name=jdo.WORKERS))
    state = jax.vmap(single.init, axis_name=jdo.WORKERS)(
        _stack(params, 1), jnp.zeros((1, 2), jnp.uint32)
    )
    for t in range(STEPS):
        state, _ = step(
            state, jax.tree.map(lambda b, t=t: b[t][None], merged), jnp.zeros((1, 2), jnp.uint32)
        )
    return jax.tree.map(lambda x: x[0], state.params)


def _stack(tree, n=W):
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *x.shape)), tree)


def _run_lifted(optimizer, lifting, mesh):
    loss_fn, params, batches = _problem()
    algo = jdo.algorithms.allreduce_sgd(loss_fn, optimizer)
    keys = jnp.zeros((W, 2), jnp.uint32)
    init = jax.jit(jdo.lift(algo.init, lifting, mesh=mesh, in_axes=(None, 0)))
    step = jax.jit(jdo.lift(algo.step, lifting, mesh=mesh))
    state = init(params, keys)
    for t in range(STEPS):
        state, metrics = step(state, jax.tree.map(lambda b, t=t: b[t], batches), keys)
        if t % 8 == 0:
            jax.block_until_ready(metrics)  # see PITFALLS: never queue many collective steps
    return state.params


OPTIMIZERS = {"sgd": lambda: optax.sgd(0.1), "adam": lambda: optax.adam(1e-2)}


@pytest.mark.parametrize("opt", OPTIMIZERS)
@pytest.mark.parametrize("lifting", jdo.LIFTINGS)
def test_equals_single_worker_on_concatenated_batch(opt, lifting, mesh8):
    reference = _single_worker(OPTIMIZERS[opt]())
    params = _run_lifted(OPTIMIZERS[opt](), lifting, mesh8)
    for leaf, ref in zip(jax.tree.leaves(params), jax.tree.leaves(reference), strict=True):
        for w in range(W):  # every worker holds the same params
            np.testing.assert_allclose(leaf[w], ref, atol=1e-5, rtol=1e-5)


def test_vmap_and_shard_map_liftings_agree(mesh8):
    a = _run_lifted(optax.adam(1e-2), "vmap", mesh8)
    b = _run_lifted(optax.adam(1e-2), "shard_map", mesh8)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, atol=1e-6, rtol=1e-6)


def test_users_own_pmap_loop_with_all_reduce_transform():
    """The transform inside a hand-written pmap loop, no jdo runner."""
    loss_fn, params, batches = _problem()
    tx = optax.chain(jdo.transforms.all_reduce(), optax.sgd(0.1))

    def step(params, opt_state, batch):
        grads, _ = jax.grad(loss_fn, has_aux=True)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    pstep = jax.pmap(step, axis_name="workers")
    p, s = _stack(params), jax.pmap(tx.init)(_stack(params))
    for t in range(STEPS):
        p, s = pstep(p, s, jax.tree.map(lambda b, t=t: b[t], batches))
        if t % 8 == 0:
            jax.block_until_ready(p)
    reference = _single_worker(optax.sgd(0.1))
    for leaf, ref in zip(jax.tree.leaves(p), jax.tree.leaves(reference), strict=True):
        np.testing.assert_allclose(leaf[3], ref, atol=1e-5, rtol=1e-5)


def test_other_axis_name():
    loss_fn, params, batches = _problem()
    algo = jdo.algorithms.allreduce_sgd(loss_fn, optax.sgd(0.1), axis_name="dp")
    keys = jnp.zeros((W, 2), jnp.uint32)
    # jitted: op by op, the eager vmap compiled every primitive on its own (9 s)
    state = jax.jit(jax.vmap(algo.init, in_axes=(None, 0), axis_name="dp"))(params, keys)
    batch = jax.tree.map(lambda b: b[0], batches)
    state, m = jax.jit(jax.vmap(algo.step, axis_name="dp"))(state, batch, keys)
    assert m["loss"].shape == (W,)
    with pytest.raises(NameError, match="unbound axis name: dp"):
        jax.jit(jax.vmap(algo.step, axis_name="workers"))(state, batch, keys)


def test_registry_and_bad_optimizer():
    assert jdo.algorithms.get("allreduce_sgd") is jdo.algorithms.allreduce_sgd
    with pytest.raises(KeyError, match="unknown algorithm 'nope'; known: .*allreduce_sgd"):
        jdo.algorithms.get("nope")
    with pytest.raises(checks.WrongType, match="optax.GradientTransformation") as e:
        jdo.algorithms.allreduce_sgd(lambda p, b, k: (0.0, {}), 0.1)
    assert e.value.argument == "optimizer"


@pytest.mark.parametrize(
    "name,extra",
    [
        ("allreduce_sgd", {}),
        ("compressed_sgd", {"compressor": jdo.compress.identity()}),
        ("powersgd", {}),
        ("choco_sgd", {"topology": jdo.topology.ring(4), "compressor": jdo.compress.identity()}),
        ("local_sgd", {}),
        ("diloco", {}),
        ("fedavg", {}),
        ("dpsgd", {"topology": jdo.topology.ring(4)}),
        ("gradient_tracking", {"topology": jdo.topology.ring(4)}),
        ("push_sum", {"topology": jdo.topology.ring(4)}),
    ],
)
def test_every_algorithm_refuses_a_non_optax_optimizer_the_same_way(name, extra):
    # Before jdo.checks, two factories raised TypeError and three ValueError for this.
    with pytest.raises(checks.WrongType, match="must be an optax.GradientTransformation") as e:
        jdo.algorithms.get(name)(lambda p, b, k: (0.0, {}), "adam", **extra)
    assert e.value.argument == "optimizer"
