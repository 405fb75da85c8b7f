"""Bad input: ONE table of every bad value, file and command line the tests know. Each must fail
with one clear message naming the key and what is allowed, the exit status the CLI documents
(1: Hydra's own composition errors; 2: a bad config or input), no traceback, and nothing lost:
every case runs into a copy of a finished run, whose checkpoints and metrics must come out
byte-identical.

Cases the runner raises (``ConfigError``, which the CLI prints as ``error: <message>`` with
status 2) run in this process through :func:`jdo.train.run`. Cases only the command line shows
(``cli=True``: Hydra's composition errors, what the CLI checks before JAX starts or before
``run``, a missing extra) and a few runner cases end to end all run in ONE fresh process
through the CLI's entry point (:func:`tests.helpers.run_cli_cases`).
"""

import hashlib
import os
import shutil
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from jdo.train import ConfigError, run
from tests.conftest import compose_cfg
from tests.helpers import run_cli_cases, write_idx, write_mnist_dir

SMOKE = ("debug=smoke",)


class Case(NamedTuple):
    overrides: tuple[str, ...]  # "{run}", "{truncated}", ...: paths made by _files()
    status: int  # what the shell sees
    message: str | tuple[str, ...]  # what stderr (or "error: " + the ConfigError) holds
    cli: bool = False  # run through the command line (else through jdo.train.run)
    without: tuple[str, ...] = ()  # modules made unimportable for this case


CASES = [
    # Hydra's own composition errors (status 1; Hydra lists the choices)
    Case(
        ("algorithm=nope",),
        1,
        ("Could not find 'algorithm/nope'", "Available options in 'algorithm':"),
        cli=True,
    ),
    Case(("model=resnet9000",), 1, "Could not find 'model/resnet9000'", cli=True),
    Case(("trainer.nope=1",), 1, "Key 'nope' is not in struct", cli=True),
    # checked by the CLI before JAX starts (so first among the cli cases) or before run()
    Case(
        ("cpu_devices=0",),
        2,
        "error: cpu_devices: must be a positive integer, auto or null, got 0",
        cli=True,
    ),
    Case(
        ("deterministic=maybe",),
        2,
        "error: deterministic: must be true or false, got 'maybe'",
        cli=True,
    ),
    Case(
        ("distributed.num_processes=2",),
        2,
        "error: distributed.coordinator: is required when distributed.num_processes is set",
        cli=True,
    ),
    Case(
        ("hydra.run.dir={blocked}",),
        2,
        "error: hydra.run.dir: cannot create {blocked}: {blocked_parent} is not a directory",
        cli=True,
    ),
    Case(
        ("task=cartpole",),
        2,
        "error: task: reinforcement-learning tasks need gymnax and gymnasium: "
        "pip install 'jdo[rl]'",
        cli=True,
        without=("gymnax",),
    ),
    Case(
        ("backend=ray", "algorithm=parameter_server", "parameter_server.mode=async"),
        2,
        "error: backend: backend=ray needs Ray: pip install 'jdo[ray]'",
        cli=True,
        without=("ray",),
    ),
    # backend=ray (jdo/train/ray_run.py): refused before Ray starts
    Case(("backend=mpi",), 2, "error: backend: must be one of spmd, ray; got 'mpi'"),
    Case(
        ("backend=ray",),
        2,
        "error: algorithm: backend=ray runs algorithm=parameter_server (modes async, ssp), "
        "got allreduce_sgd",
    ),
    Case(
        ("backend=ray", "algorithm=parameter_server", "parameter_server.mode=sync"),
        2,
        "error: algorithm.mode: must be one of async, ssp; got 'sync'",
    ),
    Case(
        ("backend=ray", "algorithm=parameter_server", "parameter_server.mode=ssp"),
        2,
        "error: algorithm.staleness: ssp needs a non-negative integer staleness "
        "(parameter_server.staleness=2), got None",
    ),
    Case(
        (
            "backend=ray",
            "algorithm=parameter_server",
            "parameter_server.mode=async",
            "trainer.nonfinite=skip",
        ),
        2,
        "error: trainer.nonfinite: backend=ray stops on a non-finite loss (stop)",
    ),
    # config values
    Case(
        ("trainer.steps=abc",),
        2,
        "error: trainer.steps: must be a positive integer, got 'abc'",
        cli=True,
    ),
    # a simulated cluster (jdo.system): each part's own key
    Case(
        ("cluster=cloud", "cluster.nodes=3"),
        2,
        "error: cluster.nodes: nodes x workers_per_node must equal the number of workers: "
        "3 x 1 = 3, but the run has 8 workers (nodes: null derives it)",
    ),
    Case(
        ("cluster=cloud", "cluster.collective=mesh"),
        2,
        "error: cluster.collective: must be one of 'ring', 'tree', 'hierarchical'; got 'mesh'",
    ),
    Case(
        ("cluster=cloud", "cluster.inter.bandwidth_Bps=0"),
        2,
        "error: cluster.inter.bandwidth_Bps: must be a positive number, got 0",
    ),
    Case(
        ("cluster=datacenter", "cluster.intra=null"),
        2,
        "error: cluster.intra: is required when workers_per_node > 1 (got workers_per_node=8)",
    ),
    Case(
        ("cluster=cloud", "cluster/stragglers=slow_worker", "cluster.stragglers.factor=-1"),
        2,
        "error: cluster.stragglers.factor: must be a positive number, got -1",
    ),
    Case(
        ("+cluster/stragglers=slow_worker",),
        2,
        "error: cluster: has no _target_: choose a cluster first",
    ),
    # in-run faults, robust aggregation, backup workers (jdo.faults, jdo.aggregators)
    Case(
        ("faults=link_drop", "algorithm=local_sgd"),
        2,
        "error: faults: is not taken by algorithm local_sgd (algorithms that take it: "
        "allreduce_sgd, dpsgd, push_sum)",
    ),
    Case(("faults=link_drop", "faults.p=1.5"), 2, "error: faults.p: must be in [0, 1], got 1.5"),
    Case(
        ("aggregator=krum", "algorithm=dpsgd"),
        2,
        "error: aggregator: krum(f=1) needs every worker's update (an all-gather): it goes "
        "with algorithm=allreduce_sgd; dpsgd takes aggregator=clipped_gossip",
    ),
    Case(
        ("aggregator=clipped_gossip",),
        2,
        "error: aggregator: clipped_gossip clips the pull of a worker's gossip neighbours: it "
        "goes with algorithm=dpsgd, not allreduce_sgd",
    ),
    Case(
        ("aggregator=clipped_gossip", "algorithm=dpsgd", "aggregator.tau=-1"),
        2,
        "error: aggregator.tau: must be a positive number, got -1",
    ),
    Case(
        ("faults=byzantine", "faults.workers=[0,1,2,3]", "aggregator=krum"),
        2,
        "error: aggregator: byzantine must be fewer than half the workers for krum(f=1)",
    ),
    Case(
        ("faults=byzantine", "faults.attack=label_flip", "task=least_squares"),
        2,
        "error: faults.attack: label_flip needs class labels, but task least_squares is a "
        "regression",
    ),
    Case(
        ("trainer.backup_workers=2",),
        2,
        "error: trainer.backup_workers: needs a simulated cluster (cluster=datacenter, cloud, "
        "edge or measured)",
    ),
    Case(("trainer.steps=0",), 2, "error: trainer.steps: must be a positive integer, got 0"),
    Case(("trainer.steps=-5",), 2, "error: trainer.steps: must be a positive integer, got -5"),
    Case(
        ("trainer.steps=1001", "trainer.log_every=50", "trainer.eval_every=50"),
        2,
        "error: trainer.steps: must be a multiple of trainer.log_every (50)",
    ),
    Case(
        ("trainer.eval_every=75", "trainer.log_every=50", "trainer.steps=1000"),
        2,
        "error: trainer.eval_every: must be a multiple of trainer.log_every",
    ),
    Case(
        ("trainer.batch_size=0",),
        2,
        "error: trainer.batch_size: must be a positive integer or null, got 0",
    ),
    Case(
        ("trainer.nonfinite=maybe",),
        2,
        "error: trainer.nonfinite: must be one of stop, skip; got 'maybe'",
    ),
    Case(
        ("+trainer.stesp=5",),
        2,
        "error: trainer.stesp: unknown key; allowed keys: backup_workers, batch_size, ",
    ),
    Case(("workers=0",), 2, "error: workers: must be a positive integer, got 0"),
    Case(("workers=two",), 2, "error: workers: must be a positive integer, got 'two'"),
    Case(("seed=1.5",), 2, "error: seed: must be a non-negative integer, got 1.5"),
    Case(("seed=-1",), 2, "error: seed: must be a non-negative integer, got -1"),
    Case(
        ("algorithm=ppo",),
        2,
        "error: algorithm: ppo is a reinforcement-learning algorithm: use it with an RL task",
    ),
    Case(("model.hidden=128",), 2, "error: model.hidden: must be a list of integers, got 128"),
    Case(
        ("algorithm=compressed_sgd", "compression=top_k", "compression.ratio=1.5"),
        2,
        "error: compression.ratio: must be in (0, 1], got 1.5",
    ),
    Case(("algorithm=dpsgd", "topology=torus", "workers=7"), 2, "error: topology.n: "),
    Case(("lifting.devices=3",), 2, "error: lifting.devices: spreads the workers over"),
    Case(
        ("optimizer.learning_rate=0",),
        2,
        "error: optimizer.learning_rate: must be a positive number, got 0",
    ),
    Case(
        ("optimizer.learning_rate=-0.1",),
        2,
        "error: optimizer.learning_rate: must be a positive number, got -0.1",
    ),
    Case(
        ("optimizer.learning_rate=-1",),
        2,
        "error: optimizer.learning_rate: must be a positive number, got -1",
    ),
    Case(
        ("lifting=shard_map", "workers=16"),
        2,
        "error: workers: the shard_map lifting puts one worker per device: workers must be 1..8",
    ),
    Case(
        ("lifting=shard_map", "workers=9"),
        2,
        "error: workers: the shard_map lifting puts one worker per device: workers must be 1..8",
    ),
    Case(
        ("lifting.devices=3",),
        2,
        "error: lifting.devices: spreads the workers over this many devices: "
        "it must divide workers (8)",
    ),
    Case(
        ("algorithm=dpsgd", "topology.n=5"), 2, "error: topology.n: must equal workers (8), got 5"
    ),
    Case(
        ("partition=dirichlet", "partition.alpha=0"),
        2,
        "error: partition.alpha: must be a positive number, got 0",
    ),
    Case(
        ("partition=natural",),
        2,
        ("error: partition: dataset has no natural partition (the digits data has no groups)",),
    ),
    Case(
        ("model=cnn", "task=least_squares"),
        2,
        "error: model: in_shape must be an image shape (H, W, C) for the CNN",
    ),
    Case(
        ("algorithm=consensus_admm", "algorithm.solver=newton"),
        2,
        "error: algorithm.solver: cannot be newton here: "
        "the Newton x-update needs the Hessian of 26122 parameters",
    ),
    Case(
        ("algorithm=parameter_server", "algorithm.mode=hogwild"),
        2,
        "error: algorithm.mode: must be one of 'sync', 'async', 'ssp', 'k_async'; got 'hogwild'",
    ),
    Case(
        ("algorithm=parameter_server", "algorithm.mode=ssp"),
        2,
        "error: algorithm.staleness: is required with mode='ssp', got None",
    ),
    Case(
        ("checkpoint.resume=sometimes",),
        2,
        "error: checkpoint.resume: must be one of auto, force; got 'sometimes'",
    ),
    Case(
        ("trainer.log_every=3", "trainer.steps=3", "checkpoint.every=2"),
        2,
        "error: checkpoint.every: must be a multiple of trainer.log_every (3) or null, got 2",
    ),
    Case(
        ("+optimiser=sgd",),
        2,
        (
            "error: optimiser: unknown top-level key; allowed: model, algorithm, ",
            "(a config group is chosen with group=option, e.g. optimizer=sgd)",
        ),
    ),
    # data files
    Case(("task=mnist",), 2, "error: task.data.directory: is required"),
    Case(("task=mnist", "task.data.directory=/no/dir"), 2, "data directory not found: /no/dir"),
    Case(("task=mnist", "task.data.directory={truncated}"), 2, "header says shape"),
    Case(("task=mnist", "task.data.directory={not_idx}"), 2, "not an IDX file (bad magic number)"),
    Case(
        ("task=npz", "task.data.path=/no/file.npz"),
        2,
        "error: task.data: FileNotFoundError: .npz file not found: /no/file.npz",
    ),
    Case(("task=npz", "task.data.path={npz}"), 2, "error: task.data: ", cli=True),
    # the finished run's checkpoint does not fit
    Case(
        ("optimizer.learning_rate=0.01",),
        2,
        "error: checkpoint.resume: {run}/checkpoints holds a checkpoint (step 3) of a different "
        "config: optimizer.learning_rate was 0.001, is now 0.01",
        cli=True,
    ),
    Case(
        ("workers=4",),
        2,
        "error: checkpoint.resume: {run}/checkpoints holds a checkpoint (step 3) of a different "
        "config: workers was 8, is now 4",
    ),
    Case(
        ("trainer.steps=2", "trainer.eval_every=1"),
        2,
        "error: trainer.steps: the checkpoint in {run}/checkpoints is at step 3: "
        "use trainer.steps >= 3",
    ),
]


def _fingerprint(run_dir: Path) -> dict[str, str]:
    """Every file of the finished run that must survive (Hydra's own .hydra/ and log aside)."""
    out = {}
    for root, _, files in os.walk(run_dir):
        for name in files:
            path = Path(root) / name
            rel = str(path.relative_to(run_dir))
            if not rel.startswith((".hydra", "train.log")):
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _files(tmp_path: Path) -> dict[str, str]:
    """Data files for the data-file cases."""
    good = write_mnist_dir(str(tmp_path / "mnist"))
    bad = shutil.copytree(good, tmp_path / "mnist_truncated")
    images = bad / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    notidx = shutil.copytree(good, tmp_path / "mnist_not_idx")
    (notidx / "train-images-idx3-ubyte").write_bytes(b"PK\x03\x04 this is a zip, not IDX")
    write_idx(str(tmp_path / "unused.idx"), np.zeros(3, "uint8"))
    (tmp_path / "broken.npz").write_bytes(b"not an npz archive")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    return {
        "truncated": str(bad),
        "not_idx": str(notidx),
        "npz": str(tmp_path / "broken.npz"),
        "blocked": str(blocker / "run"),
        "blocked_parent": str(blocker),
    }


class Prepared(NamedTuple):
    overrides: list[str]  # with paths filled in
    message: tuple[str, ...]
    run_dir: Path
    before: dict[str, str]  # the finished run's fingerprint


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Each case's overrides and expected messages with paths filled in, and its own copy of a
    finished smoke run (8 workers, checkpoints at step 3)."""
    finished = tmp_path_factory.mktemp("finished")
    run(compose_cfg(*SMOKE), output_dir=str(finished))
    assert (finished / "checkpoints" / "3").is_dir()
    work = tmp_path_factory.mktemp("bad_input")
    files = _files(work)
    out = []
    for i, case in enumerate(CASES):
        run_dir = work / f"run{i}"
        shutil.copytree(finished, run_dir)
        names = {**files, "run": str(run_dir)}
        messages = (case.message,) if isinstance(case.message, str) else case.message
        overrides = [o.format(**names) for o in case.overrides]
        if not any(o.startswith("hydra.run.dir=") for o in overrides):
            overrides.append(f"hydra.run.dir={run_dir}")
        out.append(
            Prepared(
                overrides,
                tuple(m.format(**names) for m in messages),
                run_dir,
                _fingerprint(run_dir),
            )
        )
    return out


@pytest.fixture(scope="module")
def cli_results(prepared, tmp_path_factory):
    """The ``cli=True`` cases, in table order, in one fresh process: ``{index: result}``."""
    indices = [i for i, case in enumerate(CASES) if case.cli]
    cases = [
        {"argv": [*SMOKE, *prepared[i].overrides], "without": list(CASES[i].without)}
        for i in indices
    ]
    return dict(zip(indices, run_cli_cases(cases, tmp_path_factory.mktemp("cli")), strict=True))


@pytest.mark.parametrize("index", range(len(CASES)), ids=[" ".join(c.overrides) for c in CASES])
def test_bad_input_one_message_non_zero_exit_nothing_lost(index, prepared, request):
    case, p = CASES[index], prepared[index]
    if case.cli:
        result = request.getfixturevalue("cli_results")[index]
        status, stderr = result["status"], result["stderr"]
        assert "Traceback" not in stderr
    else:
        overrides = [o for o in p.overrides if not o.startswith("hydra.run.dir=")]
        with pytest.raises(ConfigError) as err:
            run(compose_cfg(*SMOKE, *overrides), output_dir=str(p.run_dir))
        status, stderr = 2, f"error: {err.value}"
    assert status == case.status, stderr
    for message in p.message:
        assert message in stderr
    assert _fingerprint(p.run_dir) == p.before


def test_run_refuses_an_output_directory_it_cannot_write(tmp_path):
    """What ``jdo.train.run`` says itself (the CLI checks ``hydra.run.dir`` before Hydra
    makes it: the hydra.run.dir case above)."""
    blocked = _files(tmp_path)["blocked"]
    expected = f"output_dir: cannot write to {blocked}: Not a directory"
    with pytest.raises(ConfigError, match=expected):
        run(compose_cfg(*SMOKE), output_dir=blocked)
