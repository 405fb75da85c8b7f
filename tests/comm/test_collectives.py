import jax
import numpy as np
import pytest

import jdo
from jdo import comm


@pytest.mark.parametrize("lifting", jdo.LIFTINGS)
@pytest.mark.parametrize(
    "collective,reference",
    [(comm.mean, comm.mean_reference), (comm.sum, comm.sum_reference)],
)
def test_collective_matches_dense_reference(lifting, collective, reference, mesh8):
    xs = np.random.default_rng(0).normal(size=(8, 5, 3)).astype(np.float32)
    lifted = jax.jit(jdo.lift(collective, lifting, mesh=mesh8))
    np.testing.assert_allclose(lifted(xs), reference(xs), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("lifting", jdo.LIFTINGS)
def test_worker_index_and_count(lifting, mesh8):
    def who(x):
        return comm.worker_index() + 0 * x, comm.num_workers() + 0 * x

    idx, count = jax.jit(jdo.lift(who, lifting, mesh=mesh8))(np.zeros(8, np.int32))
    np.testing.assert_array_equal(idx, np.arange(8))
    np.testing.assert_array_equal(count, np.full(8, 8))


def test_lift_rejects_unknown_lifting():
    with pytest.raises(ValueError, match="unknown lifting 'pmap'; allowed: vmap, shard_map"):
        jdo.lift(comm.mean, "pmap")
