"""Every Hydra group option composes, validates and builds, and smoke-runs (bad values:
tests/test_bad_input.py)."""

import os
import shlex

import jax
import pytest
from omegaconf import OmegaConf

from jdo.train import run
from jdo.train.builder import build
from jdo.train.clocked import cluster_from_config
from jdo.train.config import validate
from tests.conftest import CONF
from tests.helpers import write_mnist_dir, write_npz
from tests.test_presets import PRESETS
from tests.test_readme_commands import COMMANDS as README_COMMANDS
from tests.test_readme_commands import not_run_here

GROUPS = (
    "task",
    "model",
    "algorithm",
    "topology",
    "compression",
    "optimizer",
    "partition",
    "lifting",
    "trainer",
    "logger",
    "checkpoint",
)
SMOKE = ("debug=smoke",)
# Checkpointing is the checkpoint group's own case (checkpoint=default below); elsewhere it only
# adds an orbax save per run (tests/train/test_checkpoint.py tests it).
NO_CHECKPOINT = ("checkpoint=none",)
SMALL_SYNTHETIC = ("task.data.num_train=64", "task.data.num_test=32")


def _is_rl(group, option):
    """RL tasks, algorithms and networks (or options extending one, like decentralized_ppo):
    tests/rl/test_build.py runs those."""
    with open(os.path.join(CONF, group, f"{option}.yaml"), encoding="utf-8") as f:
        text = f.read()
    if "kind: rl" in text or "_target_: jdo.rl." in text:
        return True
    parents = [line.strip()[2:] for line in text.splitlines() if line.startswith("  - ")]
    return any(
        _is_rl(group, p) for p in parents if os.path.isfile(os.path.join(CONF, group, p + ".yaml"))
    )


def _options(group):
    names = sorted(f[:-5] for f in os.listdir(os.path.join(CONF, group)) if f.endswith(".yaml"))
    return [n for n in names if not _is_rl(group, n)]


def _needs(option_override, tmp_path):
    """Extra overrides an option needs to run here (local files, a compatible model/data)."""
    extra = {
        "task=mnist": [f"task.data.directory={write_mnist_dir(str(tmp_path / 'mnist'))}"],
        "task=npz": [f"task.data.path={write_npz(str(tmp_path / 'c.npz'), shape=(8, 8, 3))}"],
        "task=quadratics": ["trainer.batch_size=null"],
        "partition=natural": ["task=quadratics"],
        "partition=shard": ["partition.shards_per_worker=2"],
        "lifting=shard_map": ["workers=8"],
        "model=cnn": ["trainer.batch_size=4"],  # 4 examples keep the CNN's smoke run cheap
        "experiment=digits_cnn": ["trainer.batch_size=4"],
        "algorithm=consensus_admm": ["task=least_squares", "trainer.batch_size=null"],
        "algorithm=decentralized_admm": ["task=least_squares", "trainer.batch_size=null"],
        # sequence models read [T, C] inputs; task=mnist1d with model=cnn1d is one program
        # (the second of the two loads it from the compilation cache)
        "task=mnist1d": ["model=cnn1d"],
        "model=cnn1d": ["task=mnist1d"],
        "model=gru": ["task=mnist1d"],
        "model=transformer": ["task=mnist1d", "model.depth=1"],
        # image workloads: the loaders and task.augment with a linear model; the ResNets on 2
        # examples at depth 8 (tests/models runs their full depths)
        "task=cifar10": [f"task.data.path={write_npz(str(tmp_path / 'c.npz'))}", "model=linear"],
        "task=cifar10_synthetic": [*SMALL_SYNTHETIC, "model=linear"],
        "model=resnet20": ["trainer.batch_size=2", "model.depth=8"],
        "model=resnet32": ["trainer.batch_size=2", "model.depth=8"],
        "model=resnet56": ["trainer.batch_size=2", "model.depth=8"],
        "experiment=resnet20_cifar": [
            "task=cifar10_synthetic",
            *SMALL_SYNTHETIC,
            "trainer.batch_size=2",
            "trainer.eval_batch_size=32",
        ],
    }
    if option_override.startswith("compression="):
        return ["algorithm=compressed_sgd"]
    # gossip under the default lifting: mixing over every topology under every lifting is
    # checked against numpy in tests/comm/test_gossip.py (under shard_map, ~1.5x as long)
    if option_override.startswith("topology=") and option_override in PAIRED:
        # CHOCO-SGD gossips the compressed differences over the topology
        return ["algorithm=choco_sgd", *PAIRED[option_override]]
    if option_override in PAIRED:
        return list(PAIRED[option_override])
    if option_override.startswith("topology="):
        return ["algorithm=dpsgd"]
    return extra.get(option_override, [])


# Options of two groups that share one smoke run (one program for both): a static topology and
# a compressor under CHOCO-SGD, which gossips compressed differences over the topology
# (one_peer_exponential is time-varying, which CHOCO refuses; ring and top_k run in a README
# command), and an optimizer with a partition. The second option's own run is not made.
PAIRED = {
    "topology=complete": ("compression=none",),
    "topology=erdos_renyi": ("compression=fp8",),
    "topology=exponential": ("compression=sign",),
    "topology=star": ("compression=random_k",),
    "topology=symmetric_exponential": ("compression=bf16",),
    "topology=torus": ("compression=qsgd",),
    "optimizer=adamw": ("partition=iid",),
    "optimizer=momentum": ("partition=shard", "partition.shards_per_worker=2"),
}
COVERED = {extra[0] for extra in PAIRED.values()}
CASES = [f"{g}={o}" for g in GROUPS for o in _options(g)] + [
    # the paper presets: tests/test_presets.py builds every job of their sweeps and runs one;
    # resnet20_cifar (16 ResNet-20 workers): tests/data/test_images.py composes it, and
    # model=resnet20 smoke-runs here
    f"experiment={o}"
    for o in _options("experiment")
    if o not in (*PRESETS, "resnet20_cifar")
]
# Groups whose options are whole objects the builder makes (data, model, algorithm and its
# parts): building one checks its config; its 3-step run is a compile of ~5-20 s, so those runs
# are slow (CI runs them). The options of the other groups act inside the training loop
# (lifting, trainer, logger, checkpoint): they smoke-run in the not-slow suite too.
# An option that a README command names is run for 100 steps by tests/test_readme_commands.py
# (slow too): its smoke run here would repeat that program, so it is not run twice.
BUILT = ("task", "model", "algorithm", "topology", "compression", "optimizer", "partition")
BUILT_CASES = [c for c in CASES if c.split("=")[0] in (*BUILT, "experiment")]
IN_README = {t for c in README_COMMANDS if not not_run_here(c) for t in shlex.split(c)}
# At the smoke runs' depth (8) these configs are model=resnet20's: one program, run once.
SAME_AS_RESNET20 = {"model=resnet32", "model=resnet56"}
RUN_CASES = [
    c if c not in BUILT_CASES else pytest.param(c, marks=pytest.mark.slow)
    for c in CASES
    if c not in BUILT_CASES or (c not in IN_README | COVERED | SAME_AS_RESNET20)
]


@pytest.mark.parametrize("override", BUILT_CASES)
def test_every_built_option_composes_validates_and_builds(override, make_cfg, tmp_path):
    cfg = make_cfg(*NO_CHECKPOINT, override, *_needs(override, tmp_path), *SMOKE)
    container = OmegaConf.to_container(cfg, resolve=True)
    validate(container)
    cluster = cluster_from_config(cfg.get("cluster"), container["workers"])
    exp = build(cfg, cluster=cluster)
    assert callable(exp.algorithm.step) and jax.tree.leaves(exp.params), override


@pytest.mark.parametrize("override", RUN_CASES)
def test_every_option_composes_and_smoke_runs(override, make_cfg, tmp_path):
    checkpoint = () if override.startswith("checkpoint=") else NO_CHECKPOINT
    cfg = make_cfg(*checkpoint, override, *_needs(override, tmp_path), *SMOKE)
    summary = run(cfg, output_dir=str(tmp_path / "run"))
    assert summary["steps"] == 3
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") == 3
    for name in ("config.yaml", "summary.json"):
        assert (tmp_path / "run" / name).is_file()
    saved = (tmp_path / "run" / "checkpoints" / "3").is_dir()
    assert saved == (override == "checkpoint=default"), override


def test_slurm_launcher_preset_composes_with_requeue():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=os.path.abspath(CONF), version_base="1.3"):
        cfg = compose(
            config_name="config", overrides=["hydra/launcher=slurm"], return_hydra_config=True
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.max_num_timeout > 0 and launcher.signal_delay_s > 0


def test_default_config_smoke_run(make_cfg, tmp_path):
    summary = run(make_cfg(*SMOKE), output_dir=str(tmp_path))
    assert summary["workers"] == 8 and summary["lifting"] == "vmap"
    assert 0 < summary["train/loss"] < 3


# Bad values and inputs: the one table in tests/test_bad_input.py.
