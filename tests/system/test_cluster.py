"""Collective times and wire bytes against their closed forms, written out independently."""

import math

import pytest

import jdo.system as system
from jdo.checks import InvalidArgument, WrongType

ALPHA, B = 3.7e-6, 2.5e9  # seconds, bytes/second
S = 12_345_678.0
ALPHA_I, B_I = 1.3e-6, 4.0e11  # intra
ALPHA_E, B_E = 8.1e-6, 5.0e10  # inter


def close(a, b):
    assert math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0), (a, b)


def flat(collective="ring"):
    return system.Cluster(inter=system.Link(ALPHA, B), collective=collective)


def ceil_lg(n):
    return math.ceil(math.log2(n))


# ---- ring ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 8, 13, 64])
def test_ring_times_are_the_closed_forms(n):
    c = flat("ring")
    close(c.collective_time("all-reduce", S, n), 2 * (n - 1) * ALPHA + 2 * (n - 1) / n * S / B)
    for kind in ("all-gather", "reduce-scatter", "all-to-all"):
        close(c.collective_time(kind, S, n), (n - 1) * ALPHA + (n - 1) / n * S / B)
    close(c.collective_time("collective-permute", S, n), ALPHA + S / B)
    close(c.collective_time("broadcast", S, n), (n - 1) * ALPHA + S / B)


@pytest.mark.parametrize("n", [2, 3, 8, 13])
def test_ring_wire_bytes(n):
    c = flat("ring")
    close(c.wire_bytes("all-reduce", S, n), 2 * (n - 1) / n * S)
    shard = S / n  # all-gather: S is the output, n shards
    close(c.wire_bytes("all-gather", S, n), (n - 1) * shard)
    close(c.wire_bytes("reduce-scatter", S, n), (n - 1) / n * S)
    close(c.wire_bytes("all-to-all", S, n), (n - 1) / n * S)
    close(c.wire_bytes("collective-permute", S, n), S)
    close(c.wire_bytes("broadcast", S, n), (n - 1) / n * S)  # all but the last of the chain


# ---- tree (Thakur, Rabenseifner & Gropp 2005) ---------------------------------------------


@pytest.mark.parametrize("n", [2, 5, 8, 16, 100])
def test_tree_times_are_the_closed_forms(n):
    c, lg = flat("tree"), ceil_lg(n)
    close(c.collective_time("all-reduce", S, n), lg * (ALPHA + S / B))
    close(c.collective_time("all-gather", S, n), lg * ALPHA + (n - 1) / n * S / B)
    close(c.collective_time("reduce-scatter", S, n), lg * ALPHA + (n - 1) / n * S / B)
    close(c.collective_time("broadcast", S, n), lg * (ALPHA + S / B))
    close(c.collective_time("all-to-all", S, n), lg * ALPHA + S / 2 * lg / B)
    close(c.collective_time("collective-permute", S, n), ALPHA + S / B)
    close(c.wire_bytes("all-reduce", S, n), lg * S)
    close(c.wire_bytes("all-to-all", S, n), lg * S / 2)
    close(c.wire_bytes("broadcast", S, n), (n - 1) / n * S)


# ---- nccl-tests' bus bandwidth --------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 4, 8, 24])
def test_busbw_from_the_model_is_the_link_bandwidth(n):
    """nccl-tests (PERFORMANCE.md): algbw = S / t; busbw = algbw x 2(n-1)/n for all-reduce,
    x (n-1)/n for all-gather, reduce-scatter and all-to-all, x 1 for broadcast and sendrecv.
    A bandwidth-optimal ring with alpha = 0 reaches busbw = B."""
    c = system.Cluster(inter=system.Link(0.0, B))
    factor = {
        "all-reduce": 2 * (n - 1) / n,
        "all-gather": (n - 1) / n,
        "reduce-scatter": (n - 1) / n,
        "all-to-all": (n - 1) / n,
        "broadcast": 1.0,
        "collective-permute": 1.0,
    }
    for kind, f in factor.items():
        algbw = S / c.collective_time(kind, S, n)
        close(algbw * f, B)


# ---- hierarchical ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_level():
    return system.Cluster(
        workers_per_node=4,
        intra=system.Link(ALPHA_I, B_I),
        inter=system.Link(ALPHA_E, B_E),
        collective="hierarchical",
    )


def test_hierarchical_all_reduce_is_the_two_level_formula(two_level):
    k, m = 4, 3
    n = k * m
    intra_rs = (k - 1) * ALPHA_I + (k - 1) / k * S / B_I
    inter_ar = 2 * (m - 1) * ALPHA_E + 2 * (m - 1) / m * (S / k) / B_E
    intra_ag = (k - 1) * ALPHA_I + (k - 1) / k * S / B_I
    close(two_level.collective_time("all-reduce", S, n), intra_rs + inter_ar + intra_ag)
    close(
        two_level.wire_bytes("all-reduce", S, n),
        2 * (k - 1) / k * S + 2 * (m - 1) / m * S / k,
    )


def test_hierarchical_other_kinds(two_level):
    k, m = 4, 3
    n = k * m
    rs_i = (k - 1) * ALPHA_I + (k - 1) / k * S / B_I
    close(
        two_level.collective_time("reduce-scatter", S, n),
        rs_i + (m - 1) * ALPHA_E + (m - 1) / m * (S / k) / B_E,
    )
    close(
        two_level.collective_time("all-gather", S, n),
        (m - 1) * ALPHA_E + (m - 1) / m * (S / k) / B_E + rs_i,
    )
    close(
        two_level.collective_time("all-to-all", S, n),
        rs_i + (m - 1) * ALPHA_E + (m - 1) / m * S / B_E,
    )
    close(
        two_level.collective_time("broadcast", S, n),
        rs_i + (m - 1) * ALPHA_E + (S / k) / B_E + rs_i,  # scatter, chain of S/k, all-gather
    )
    close(two_level.collective_time("collective-permute", S, n), ALPHA_E + S / B_E)
    close(two_level.wire_bytes("all-to-all", S, n), (k - 1) / k * S + (m - 1) / m * S)
    close(
        two_level.wire_bytes("broadcast", S, n),
        ((k - 1) / k * S + (m - 1) * S + n * (k - 1) / k * S) / n,
    )


def test_hierarchical_falls_back_to_a_flat_ring(two_level):
    # inside one node: the ring on the intra link
    close(two_level.collective_time("all-reduce", S, 4), 6 * ALPHA_I + 2 * 3 / 4 * S / B_I)
    # 6 workers do not span whole nodes of 4: the ring on the inter link
    close(two_level.collective_time("all-reduce", S, 6), 10 * ALPHA_E + 2 * 5 / 6 * S / B_E)
    # one worker per node: the two-level all-reduce is the flat ring
    one = system.Cluster(inter=system.Link(ALPHA_E, B_E), collective="hierarchical")
    close(one.collective_time("all-reduce", S, 8), 14 * ALPHA_E + 2 * 7 / 8 * S / B_E)


# ---- which link -------------------------------------------------------------------------------


def test_flat_collectives_pick_intra_only_when_every_group_sits_in_one_node():
    c = system.Cluster(
        nodes=2,
        workers_per_node=8,
        intra=system.Link(ALPHA_I, B_I),
        inter=system.Link(ALPHA_E, B_E),
    )
    ring = lambda a, b, n: 2 * (n - 1) * a + 2 * (n - 1) / n * S / b
    close(c.collective_time("all-reduce", S, 8), ring(ALPHA_I, B_I, 8))
    close(c.collective_time("all-reduce", S, 4), ring(ALPHA_I, B_I, 4))
    close(c.collective_time("all-reduce", S, 3), ring(ALPHA_E, B_E, 3))  # groups straddle nodes
    close(c.collective_time("all-reduce", S, 16), ring(ALPHA_E, B_E, 16))
    assert c.link(0, 7) == system.Link(ALPHA_I, B_I) and c.link(7, 8) == system.Link(ALPHA_E, B_E)
    close(c.message_time(9, 15, S), ALPHA_I + S / B_I)
    close(c.message_time(1, 9, S), ALPHA_E + S / B_E)
    assert [c.node_of(w) for w in (0, 7, 8, 15)] == [0, 0, 1, 1] and c.size == 16


def test_one_worker_costs_nothing():
    for collective in system.COLLECTIVES:
        c = flat(collective)
        for kind in system.KINDS:
            assert c.collective_time(kind, S, 1) == 0.0 and c.wire_bytes(kind, S, 1) == 0.0


def test_link_time():
    close(system.Link(ALPHA, B).time(S), ALPHA + S / B)


# ---- sizing and compute -------------------------------------------------------------------------


def test_for_workers_derives_or_checks_nodes():
    c = system.Cluster(workers_per_node=4, intra=system.Link(0, 1), inter=system.Link(0, 1))
    assert c.for_workers(12).nodes == 3 and c.for_workers(12).size == 12
    with pytest.raises(InvalidArgument, match="workers_per_node must divide") as e:
        c.for_workers(10)
    assert e.value.argument == "workers_per_node"
    fixed_nodes = system.Cluster(
        nodes=3, workers_per_node=2, intra=system.Link(0, 1), inter=system.Link(0, 1)
    )
    with pytest.raises(InvalidArgument, match=r"3 x 2 = 6, but the run has 8 workers") as e:
        fixed_nodes.for_workers(8)
    assert e.value.argument == "nodes"
    assert fixed_nodes.for_workers(6) == fixed_nodes


def test_compute_seconds_divides_by_the_cycled_speeds():
    c = system.Cluster(inter=system.Link(0, 1), compute=system.fixed(0.6), speeds=[1, 2, 0.5])
    assert [c.compute_seconds(w) for w in range(5)] == [0.6, 0.3, 1.2, 0.6, 0.3]
    assert c.worker_speeds(4).tolist() == [1.0, 2.0, 0.5, 1.0]
    measured = system.Cluster(inter=system.Link(0, 1), compute=system.measured(2.0), speeds=[4.0])
    close(measured.compute_seconds(0, system.StepProfile(seconds=0.8)), 0.8 / 2.0 / 4.0)
    with pytest.raises(InvalidArgument, match="speeds has 3 entries for 2 workers"):
        c.for_workers(2)


@pytest.mark.parametrize(
    "call,argument,message",
    [
        (lambda c: c.collective_time("allreduce", 1, 2), "kind", "must be one of 'all-reduce'"),
        (lambda c: c.collective_time("all-reduce", -1, 2), "nbytes", "non-negative"),
        (lambda c: c.wire_bytes("all-reduce", 1, 0), "group_size", "positive integer"),
        (lambda c: c.message_time(0, 1, -5), "nbytes", "non-negative"),
        (lambda c: c.for_workers(0), "workers", "positive integer"),
    ],
)
def test_bad_calls_name_the_argument(call, argument, message):
    with pytest.raises(InvalidArgument, match=message) as e:
        call(flat())
    assert e.value.argument == argument


@pytest.mark.parametrize(
    "kwargs,argument,message",
    [
        ({"collective": "butterfly"}, "collective", "one of 'ring', 'tree', 'hierarchical'"),
        ({"workers_per_node": 4}, "intra", "required when workers_per_node > 1"),
        ({"workers_per_node": 0}, "workers_per_node", "positive integer"),
        ({"nodes": 0}, "nodes", "positive integer"),
        ({"speeds": [1.0, 0.0]}, "speeds", "positive number"),
        ({"speeds": [1.0, -2.0]}, "speeds", "positive number"),
        ({"speeds": []}, "speeds", "must not be empty"),
    ],
)
def test_bad_clusters_name_the_key(kwargs, argument, message):
    with pytest.raises(InvalidArgument, match=message) as e:
        system.Cluster(inter=system.Link(0, 1), **kwargs)
    assert e.value.argument == argument


def test_bad_links_and_types():
    with pytest.raises(InvalidArgument, match="non-negative") as e:
        system.Link(-1e-6, 1e9)
    assert e.value.argument == "latency_s"
    with pytest.raises(InvalidArgument, match="positive") as e:
        system.Link(0.0, 0.0)
    assert e.value.argument == "bandwidth_Bps"
    with pytest.raises(WrongType) as e:
        system.Cluster(inter={"latency_s": 0, "bandwidth_Bps": 1})
    assert e.value.argument == "inter"
    with pytest.raises(WrongType) as e:
        system.Cluster(inter=system.Link(0, 1), compute=0.5)
    assert e.value.argument == "compute"
    with pytest.raises(WrongType) as e:
        system.Cluster(inter=system.Link(0, 1), stragglers="slow")
    assert e.value.argument == "stragglers"
    with pytest.raises(InvalidArgument, match="at most the cluster's 4 workers") as e:
        system.Cluster(nodes=4, inter=system.Link(0, 1)).collective_time("all-reduce", 1, 8)


def test_per_node_layout_of_strided_groups():
    c = system.Cluster(
        nodes=2,
        workers_per_node=4,
        intra=system.Link(ALPHA_I, B_I),
        inter=system.Link(ALPHA_E, B_E),
        collective="hierarchical",
    )
    assert c.group_layout([(0, 4), (1, 5), (2, 6), (3, 7)]) == 1  # one worker per node
    assert c.group_layout([(0, 1, 2, 3), (4, 5, 6, 7)]) == 4
    assert c.group_layout([(0, 1, 4, 5), (2, 3, 6, 7)]) == 2
    assert c.group_layout([(0, 1, 2, 4)]) == 1  # uneven: every hop priced as leaving the node
    # groups {0,4}, ...: a ring over 2 nodes on the inter link, not intra
    close(c.collective_time("all-reduce", S, 2, per_node=1), 2 * ALPHA_E + S / B_E)
    close(c.collective_time("all-reduce", S, 2), 2 * ALPHA_I + S / B_I)  # consecutive: intra
    # two workers on each of 2 nodes: two-level with k = 2, m = 2
    k, m = 2, 2
    close(
        c.collective_time("all-reduce", S, 4, per_node=2),
        2 * ((k - 1) * ALPHA_I + (k - 1) / k * S / B_I)
        + 2 * (m - 1) * ALPHA_E
        + 2 * (m - 1) / m * S / k / B_E,
    )
    with pytest.raises(InvalidArgument, match="must divide group_size") as e:
        c.collective_time("all-reduce", S, 4, per_node=3)
    assert e.value.argument == "per_node"
