"""The non-finite guard: stop on the step (keeping the last good checkpoint) or skip and count."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdo import comm
from jdo.algorithms import Algorithm
from jdo.train import fit
from jdo.train.checkpoint import Checkpointer
from jdo.train.experiment import Experiment
from jdo.train.guard import all_finite
from jdo.train.loop import NonFiniteError
from jdo.train.restore import CheckpointOptions


def _flaky(bad_from=None, p_bad=0.0):
    """Counts its steps; worker 1 produces NaN (from step ``bad_from`` on, or at random)."""

    def init(params, key):
        return {"params": params, "t": jnp.zeros((), jnp.int32)}

    def step(state, batch, key):
        t = state["t"] + 1
        bad = comm.worker_index() == 1
        if bad_from is not None:
            bad &= t >= bad_from
        else:
            bad &= jax.random.uniform(key) < p_bad
        w = state["params"]["w"] + jnp.where(bad, jnp.nan, 1.0)
        return {"params": {"w": w}, "t": t}, {"loss": jnp.sum(w)}

    return Experiment(
        Algorithm(init, step, params=lambda s: s["params"]),
        None,
        None,
        {"w": jnp.zeros(2)},
        None,
        None,
    )


KW = dict(workers=4, batch_size=None, log_every=5, eval_every=5, progress=False)


@pytest.mark.parametrize("lifting", ["vmap", "shard_map"])
def test_skip_drops_the_step_on_every_worker_and_counts_it(lifting):
    out = fit(_flaky(p_bad=0.3), steps=40, lifting=lifting, nonfinite="skip", **KW)
    t = np.asarray(out["state"]["t"])
    assert np.all(t == t[0])  # the workers never drift apart
    assert 0 < out["skipped_steps"] < 40
    assert out["skipped_steps"] == 40 - t[0]
    assert np.all(np.isfinite(out["state"]["params"]["w"]))
    np.testing.assert_array_equal(out["state"]["params"]["w"], float(t[0]))


def test_stop_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    ckpt = CheckpointOptions(str(tmp_path), every=10)
    with pytest.raises(
        NonFiniteError,
        match=r"at step 23 \(workers \[1\]\).* the last good "
        rf"checkpoint is {tmp_path}/20 \(step 20\)",
    ):
        fit(_flaky(bad_from=23), steps=40, lifting="vmap", checkpoint=ckpt, **KW)
    with Checkpointer(str(tmp_path)) as c:
        assert c.steps() == [10, 20]


def test_all_finite():
    assert bool(all_finite({"a": jnp.ones(3), "i": jnp.arange(3)}))
    assert not bool(all_finite({"a": jnp.array([1.0, jnp.inf])}))
    assert not bool(all_finite([jnp.array([jnp.nan], jnp.bfloat16)]))
    assert bool(all_finite({"i": jnp.arange(3)}))  # nothing to check
