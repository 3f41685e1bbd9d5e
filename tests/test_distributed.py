"""Training on several processes (``torchrun --nproc-per-node 2 -m train``) on the CPU with
the gloo backend: data-parallel training is the single-process update, ``--distribute runs``
gives every run the result it has alone, only rank 0 prints and writes, and bad settings
fail in one line.

The processes are real: ``python -m torch.distributed.run --standalone`` in a subprocess,
one thread each (``OMP_NUM_THREADS=1``: 2 cores, and the same summation order as the
1-process reference, which runs with one thread too). The step-level comparison runs this
file itself under torchrun (see :func:`_equivalence_worker` at the bottom).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cifar_archive import make_archive

from train.batches import AugmentedBatches
from train.cli import build_parser, config_from_args
from train.config import CIFAR10_MEAN, CIFAR10_STD, ConfigError
from train.distributed import Distributed, per_rank_batch, rank_range, runs_of_rank

REPO = Path(__file__).resolve().parent.parent
# The tiny run of the issue; ghost batch 32 (the default): 2 ranks × 1 split of 32 images.
TINY = (
    "--device",
    "cpu",
    "--width",
    "0.125",
    "--epochs",
    "2",
    "--batch-size",
    "64",
    "--train-subset",
    "1024",
    "--test-subset",
    "256",
    "--eval-every",
    "1",
)
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def archive_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cifar")
    make_archive(folder)
    return folder


#: Seconds before a subprocess counts as hung. A guard against hangs, not a time limit: the
#: runs take a minute or less, but a slow or busy machine must not fail them.
HANG_S = 1800


def run_cli(*args: str, processes: int = 1, timeout: int = HANG_S) -> subprocess.CompletedProcess:
    """``python -m train`` in one process, or under torchrun in ``processes``."""
    launcher = [sys.executable]
    if processes > 1:
        launcher += [
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(processes),
        ]
    env = {**os.environ, **ONE_THREAD}
    env.pop("CIFAR10_DIR", None)
    return subprocess.run(
        [*launcher, "-m", "train", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def header_count(stdout: str) -> int:
    return sum(line.split()[:2] == ["epoch", "lr"] for line in stdout.splitlines())


@pytest.fixture(scope="module")
def one_process(archive_dir, tmp_path_factory) -> dict:
    """The 1-process reference: ``--runs 2`` (seeds 0 and 1). Its run of seed 0 is also the
    reference of a 1-run data-parallel run: every run starts afresh from its seed."""
    out = tmp_path_factory.mktemp("one") / "one.json"
    result = run_cli("--data-dir", str(archive_dir), *TINY, "--runs", "2", "--json", str(out))
    assert result.returncode == 0, result.stderr
    return json.loads(out.read_text())


# --------------------------------------------------------------------------- pure helpers
@pytest.mark.parametrize("world", [2, 4])
def test_shards_of_a_batch_concatenate_to_the_unsharded_batch(world):
    """Every rank draws the whole epoch's choices and keeps its slice: the K slices in rank
    order are the single-process batch, image for image, augmentation included."""
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (40,))

    def epoch(shard: tuple[int, int], start: int = 0) -> tuple[list, torch.Tensor]:
        generator = torch.Generator().manual_seed(7)
        batches = AugmentedBatches(
            images,
            labels,
            batch_size=8,
            pad=4,
            flip=True,
            cutout=8,
            mean=CIFAR10_MEAN,
            std=CIFAR10_STD,
            dtype=torch.float32,
            backend="eager",
            generator=generator,
            shard=shard,
        )
        return list(batches.epoch(start)), generator.get_state()

    whole, whole_state = epoch((0, 1))
    shards = [epoch((rank, world)) for rank in range(world)]
    assert all(len(batches) == len(whole) == 5 for batches, _ in shards)
    for index, (inputs, targets) in enumerate(whole):
        assert torch.equal(torch.cat([batches[index][0] for batches, _ in shards]), inputs)
        assert torch.equal(torch.cat([batches[index][1] for batches, _ in shards]), targets)
        assert all(batches[index][0].shape[0] == 8 // world for batches, _ in shards)
    # every rank leaves the generator where one process does (the next epoch agrees too)
    assert all(torch.equal(state, whole_state) for _, state in shards)
    resumed, _ = epoch((1, world), start=3)
    assert torch.equal(resumed[0][0], shards[1][0][3][0])


def test_shard_must_split_the_batch_evenly():
    images = torch.zeros(16, 3, 32, 32, dtype=torch.uint8)
    for shard in ((0, 3), (2, 2), (0, 0)):
        with pytest.raises(ValueError, match="cannot take shard"):
            AugmentedBatches(
                images,
                torch.zeros(16, dtype=torch.int64),
                batch_size=8,
                pad=4,
                flip=True,
                cutout=0,
                mean=CIFAR10_MEAN,
                std=CIFAR10_STD,
                dtype=torch.float32,
                backend="eager",
                generator=torch.Generator(),
                shard=shard,
            )


def test_rank_shares_of_the_test_set_and_of_the_runs():
    for count, world in ((256, 2), (10, 3), (2, 4)):
        shares = [rank_range(count, Distributed(rank, world)) for rank in range(world)]
        assert [i for s in shares for i in range(count)[s]] == list(range(count))
    assert runs_of_rank(5, Distributed(0, 2)) == [0, 2, 4]
    assert runs_of_rank(5, Distributed(1, 2)) == [1, 3]
    assert runs_of_rank(1, Distributed(1, 2)) == []


def test_per_rank_batch_must_hold_whole_ghost_splits():
    assert per_rank_batch(64, 32, Distributed(0, 2)) == 32
    assert per_rank_batch(512, 32, Distributed(0, 4)) == 128
    assert per_rank_batch(96, 0, Distributed(0, 2)) == 48  # plain BN: any even split
    with pytest.raises(ConfigError, match="multiple of 64"):
        per_rank_batch(96, 32, Distributed(0, 2))
    with pytest.raises(ConfigError, match="multiple of the process count"):
        per_rank_batch(64, 0, Distributed(0, 3))


def test_distribute_flag_is_a_config_field_accepted_by_one_process():
    args = build_parser().parse_args(["--distribute", "runs", "--device", "cpu"])
    config, _ = config_from_args(args, has_gpu=False, measure=lambda config_at: {})
    assert config.distribute == "runs"
    with pytest.raises(ConfigError, match="invalid choice: 'bogus'.*'data', 'runs'"):
        build_parser(raise_errors=True).parse_args(["--distribute", "bogus"])


# --------------------------------------------------------------------------- data parallel
def test_two_processes_train_like_one(archive_dir, one_process, tmp_path):
    """``--distribute data`` (the default) on 2 processes against 1 process, same flags.

    The update is the single-process one up to the order of float sums (checked step by
    step in :func:`test_data_parallel_steps_equal_single_process_steps`). Over the tiny run
    that noise does not stay small: the recipe's peak learning rate amplifies it from about
    step 7 on (measured: losses equal to 1e-6 for 6 steps, then apart by ~1% by step 12), so
    the epochs' figures agree within noise, not to the last digit (measured epoch 1 train
    loss 2.0094 alone vs 2.0096 on 2 processes, final accuracy 0.3711 vs 0.3711).
    """
    out = tmp_path / "two.json"
    result = run_cli("--data-dir", str(archive_dir), *TINY, "--json", str(out), processes=2)
    assert result.returncode == 0, result.stderr
    record = json.loads(out.read_text())
    # written once, by rank 0: one file in the folder (no temporary left), one table
    assert [p.name for p in tmp_path.iterdir()] == ["two.json"]
    assert result.stdout.count(f"wrote {out}") == 1
    assert header_count(result.stdout) == 1
    assert result.stdout.count("test accuracy") == 1
    assert "2 processes, data parallel (32 images each per batch)" in result.stdout
    assert record["environment"]["world_size"] == 2
    assert record["environment"]["distribute"] == "data"
    assert record["config"]["distribute"] == "data"
    assert "Traceback" not in result.stderr

    alone = one_process["runs"][0]
    together = record["runs"][0]
    assert alone["seed"] == together["seed"] == 0
    assert len(together["epochs"]) == 2
    first_alone, first_together = alone["epochs"][0], together["epochs"][0]
    assert first_together["lr"] == pytest.approx(first_alone["lr"], rel=1e-9)
    # 16 steps of 64 images, summed over both ranks (an unsummed loss would be half)
    assert first_together["train_loss"] == pytest.approx(first_alone["train_loss"], rel=0.02)
    assert abs(first_together["train_acc"] - first_alone["train_acc"]) < 0.05
    # 256 test images: a binomial std of ~2 points at this accuracy
    assert abs(together["test_acc"] - alone["test_acc"]) < 0.08
    # it learned: chance is 10% (std 1.9 points on 256 images); 37% measured, as alone
    assert together["test_acc"] > 0.2


def test_data_parallel_steps_equal_single_process_steps(archive_dir, tmp_path):
    """Each of 2 ranks trains data-parallel and, beside it, the whole batch alone: the first
    steps (before the peak learning rate amplifies float noise) give the same losses and
    weights, the sharded evaluation with averaged BN statistics and weight average gives the
    same test figures, and at a learning rate too low to amplify the noise whole runs give
    the same table."""
    out = tmp_path / "equivalence.json"
    env = {**os.environ, **ONE_THREAD}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            str(Path(__file__)),
            str(archive_dir),
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=HANG_S,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(out.read_text())
    # ~1e-6 measured: float32 sums in another order
    assert found["step_loss_rel"] < 1e-5
    assert found["weight_diff"] < 1e-4  # absolute; 9e-6 measured
    assert found["running_stats_diff"] < 1e-5
    assert found["test_loss"][0] == pytest.approx(found["test_loss"][1], rel=1e-5)
    assert found["test_correct"][0] == found["test_correct"][1]
    for together, alone in zip(*found["rows"]):
        assert together["train_loss"] == pytest.approx(alone["train_loss"], rel=1e-3)
        assert together["test_loss"] == pytest.approx(alone["test_loss"], rel=1e-3)
        assert abs(together["train_acc"] - alone["train_acc"]) <= 4 / 512  # argmax ties
        assert abs(together["test_acc"] - alone["test_acc"]) <= 2 / 256


# --------------------------------------------------------------------------- runs
def test_runs_spread_over_processes_match_the_runs_of_one_process(
    archive_dir, one_process, tmp_path
):
    out = tmp_path / "runs.json"
    result = run_cli(
        "--data-dir",
        str(archive_dir),
        *TINY,
        "--runs",
        "2",
        "--distribute",
        "runs",
        "--json",
        str(out),
        processes=2,
    )
    assert result.returncode == 0, result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["runs.json"]
    assert result.stdout.count("run 1/2 (seed 0; process 0)") == 1
    assert result.stdout.count("run 2/2 (seed 1; process 1)") == 1
    assert header_count(result.stdout) == 2 and result.stdout.count("runs reached 94%") == 1
    record = json.loads(out.read_text())
    assert record["environment"]["world_size"] == 2
    assert record["environment"]["distribute"] == "runs"
    assert [r["seed"] for r in record["runs"]] == [r["seed"] for r in one_process["runs"]]
    # the same seeds and the same single-process work, one thread each: the same numbers
    for spread, alone in zip(record["runs"], one_process["runs"]):
        assert spread["test_acc"] == alone["test_acc"]
        for a, b in zip(spread["epochs"], alone["epochs"]):
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
            assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-6)
    assert record["summary"]["test_acc"]["mean"] == pytest.approx(
        one_process["summary"]["test_acc"]["mean"]
    )


# --------------------------------------------------------------------------- bad settings
@pytest.mark.parametrize(
    "flags, message, code",
    [
        (("--batch-size", "96"), "each of the 2 processes gets 48 images per batch", 2),
        (
            ("--checkpoint", "ck.pt"),
            "--checkpoint and --resume are not supported under torchrun",
            2,
        ),
        # every rank sees the divergence at the same step (the check is all-reduced), so all
        # stop together instead of one waiting for the other's gradients
        (("--lr", "1e9", "--train-subset", "256"), "the training loss became NaN or infinite", 4),
        (
            ("--lr", "1e9", "--train-subset", "256", "--distribute", "runs", "--runs", "2"),
            "became NaN or infinite",
            4,
        ),
    ],
)
def test_bad_settings_under_two_processes_fail_in_one_line(
    archive_dir, tmp_path, flags, message, code
):
    """Reported once, by rank 0, without a traceback of the trainer, and the ranks exit
    with the trainer's code; torchrun itself then prints its own ChildFailedError report
    (with its own traceback) and exits with 1."""
    flags = tuple(str(tmp_path / f) if f.endswith(".pt") else f for f in flags)
    tiny = dict(zip(TINY[::2], TINY[1::2]))
    tiny.update(dict(zip(flags[::2], flags[1::2])))
    args = [item for pair in tiny.items() for item in pair]
    result = run_cli("--data-dir", str(archive_dir), *args, processes=2)
    assert result.returncode != 0
    ours = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(ours) == 1 and message in ours[0]
    assert "ConfigError" not in result.stderr and str(REPO / "train") not in result.stderr
    # torchrun's report: the trainer's exit code. (Once torchrun sees the first rank fail
    # it stops the others with SIGTERM, so the second rank may be reported as -15.)
    assert f"exitcode  : {code} " in result.stderr
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- worker
def _equivalence_worker(data_dir: str, out: str) -> None:
    """Run by torchrun (2 processes): data-parallel training beside single-process training
    of the same batches in each process; rank 0 writes what it measured to ``out``."""
    import dataclasses
    import warnings

    from train.config import TrainConfig
    from train.data import load_cifar10
    from train.distributed import all_reduce_sum, init_distributed, shutdown
    from train.runtime import Runtime
    from train.step import TrainStep
    from train.trainer import Trainer

    torch.set_num_threads(1)
    ctx = init_distributed("cpu")
    runtime = Runtime(torch.device("cpu"), "eager", torch.float32, channels_last=False)
    config = TrainConfig(
        data_dir=data_dir,
        device="cpu",
        width=0.125,
        batch_size=64,
        epochs=2,
        train_subset=512,
        test_subset=256,
        eval_every=1,
        warmup_steps=0,
        download=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the synthetic archive's md5 note
        data = load_cifar10(data_dir, download=False, log=None).subset(512, 256)
    quiet = lambda line: None  # noqa: E731
    together = Trainer(config, runtime, data, log=quiet, ctx=ctx)
    alone = Trainer(config, runtime, data, log=quiet)
    for trainer in (together, alone):
        trainer.model.load_state_dict(trainer._new_model(0).state_dict())
        trainer.model.train()
        trainer._set_whitening(data.train_images)
    steps = []
    for trainer in (together, alone):
        batches = trainer._batches(
            data.train_images, data.train_labels, torch.Generator().manual_seed(0)
        )
        step = TrainStep(
            trainer.model,
            trainer.train_forward,
            config,
            runtime,
            len(batches),
            loss_scale=trainer.ctx.world_size,
        )
        steps.append((batches, step))
    step_loss_rel = weight_diff = 0.0
    # 6 steps at the recipe's rates (the weight average updates after step 5)
    for _, (x_t, y_t), (x_a, y_a) in zip(range(6), steps[0][0], steps[1][0]):
        loss_t, _ = steps[0][1](x_t, y_t)
        loss_a, _ = steps[1][1](x_a, y_a)
        all_reduce_sum(loss_t)
        step_loss_rel = max(step_loss_rel, abs(loss_t.item() / loss_a.item() - 1))
        weight_diff = max(
            weight_diff,
            *(
                (p - q).abs().max().item()
                for p, q in zip(together.model.parameters(), alone.model.parameters())
            ),
        )
    test = data.test_images, data.test_labels
    evaluated = [
        trainer._evaluate(*test, step) for trainer, (_, step) in zip((together, alone), steps)
    ]
    running_stats_diff = max(
        (a - b).abs().max().item()
        for (name, a), b in zip(together.eval_model.named_buffers(), alone.eval_model.buffers())
        if name.endswith(("running_mean", "running_var"))
    )

    # Whole runs at a learning rate that keeps the noise from growing.
    slow = config.replace(lr=0.1)
    rows = [
        [
            dataclasses.asdict(row)
            for row in Trainer(slow, runtime, data, log=quiet, ctx=c).run(0).rows
        ]
        for c in (ctx, None)
    ]
    if ctx.is_main:
        Path(out).write_text(
            json.dumps(
                {
                    "step_loss_rel": step_loss_rel,
                    "weight_diff": weight_diff,
                    "running_stats_diff": running_stats_diff,
                    "test_loss": [e[0] for e in evaluated],
                    "test_correct": [round(e[1] * 256) for e in evaluated],
                    "rows": rows,
                }
            )
        )
    shutdown()


if __name__ == "__main__":  # under torchrun: python -m torch.distributed.run ... this file
    _equivalence_worker(*sys.argv[1:3])
