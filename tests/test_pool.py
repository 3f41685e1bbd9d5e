"""``python -m train pool``: runs recorded by separate invocations, summarised as one sample.

The end-to-end test holds the pooled summary to what one invocation with ``--runs 3`` prints
for the same seeds; the unit tests hold its interval to scipy's and check every refusal
(another recipe, other arithmetic, a seed twice, files that are not the trainer's records).
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
from cifar_archive import make_archive
from scipy import stats
from tiny_training import TINY_CLI_FLAGS

from train.cli import main
from train.config import TrainConfig
from train.pool import IGNORED_FIELDS, read_record


@pytest.fixture(scope="module")
def three_ways(tmp_path_factory) -> dict[str, Path]:
    """Seeds 0–2 trained once in one invocation (``all``) and once split over two (``a``:
    seed 0, ``b``: seeds 1 and 2), each written with --json."""
    folder = tmp_path_factory.mktemp("pool")
    archive = make_archive(folder / "data").parent
    files = {name: folder / f"{name}.json" for name in ("all", "a", "b")}
    for name, extra in (
        ("all", ("--seed", "0", "--runs", "3")),
        ("a", ("--seed", "0")),
        ("b", ("--seed", "1", "--runs", "2")),
    ):
        argv = ["--data-dir", str(archive), *TINY_CLI_FLAGS, *extra, "--json", str(files[name])]
        assert main(argv) == 0, name
    return files


def test_pooled_files_give_the_summary_of_one_invocation(three_ways, tmp_path, capsys):
    out = tmp_path / "pooled.json"
    capsys.readouterr()
    assert main(["pool", str(three_ways["a"]), str(three_ways["b"]), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    whole = json.loads(three_ways["all"].read_text())
    pooled = json.loads(out.read_text())
    # Training on the CPU is deterministic per seed, so the split runs are the same runs.
    by_seed = {run["seed"]: run["test_acc"] for run in whole["runs"]}
    assert {run["seed"]: run["test_acc"] for run in pooled["runs"]} == by_seed
    assert [run["file"] for run in pooled["runs"]] == [str(three_ways["a"])] + 2 * [
        str(three_ways["b"])
    ]
    for key in ("mean", "std", "min", "max", "ci95_low", "ci95_high"):
        assert pooled["summary"]["test_acc"][key] == pytest.approx(
            whole["summary"]["test_acc"][key], abs=1e-12
        )
    assert pooled["times_pooled"] and pooled["summary"]["train_time"]["mean"] > 0
    assert "pooled 3 runs from 2 files (seeds 0, 1, 2)" in printed
    assert "95% CI, n=3" in printed and "mean time" in printed
    assert all(k not in pooled["recipe"] for k in IGNORED_FIELDS)
    # The pooled record is not itself a trainer's record.
    assert main(["pool", str(out)]) == 3
    assert "already a pooled record" in capsys.readouterr().err


# ---- unit tests on records written here ------------------------------------------------


def _record(seeds: list[float], accs: list[float], times: list[float], **config) -> dict:
    """A record shaped like the trainer's --json (one epoch per run)."""
    base_config = {"epochs": 2, "lr": 0.4, "width": 1.0, "seed": seeds[0], "runs": len(seeds)}
    runs = [
        {
            "seed": seed,
            "test_acc": acc,
            "test_loss": 1.0,
            "train_time": seconds,
            "setup_time": 0.5,
            "eval_time": 1.0,
            "epochs": [
                {
                    "epoch": 1,
                    "lr": 0.4,
                    "train_loss": 1.0,
                    "train_acc": 0.5,
                    "test_loss": 1.0,
                    "test_acc": acc,
                    "epoch_time": seconds,
                    "total_time": seconds,
                }
            ],
        }
        for seed, acc, seconds in zip(seeds, accs, times)
    ]
    environment = {
        "device": "CPU (x86_64, 2 threads)",
        "device_type": "cpu",
        "backend": "eager",
        "dtype": "float32",
        "torch": "2.13.0",
        "triton": "3.9.0",
        "cuda": None,
        "threads": 2,
        "world_size": 1,
        "distribute": None,
    }
    return {"config": {**base_config, **config}, "environment": environment, "runs": runs}


def _write(folder: Path, name: str, record: dict) -> str:
    path = folder / name
    path.write_text(json.dumps(record))
    return str(path)


def test_interval_is_students_t_over_all_runs(tmp_path, capsys):
    accs = [0.9312, 0.9388, 0.9350, 0.9401]
    a = _write(tmp_path, "a.json", _record([0, 1], accs[:2], [10.0, 12.0]))
    b = _write(tmp_path, "b.json", _record([7, 3], accs[2:], [11.0, 13.0]))
    out = tmp_path / "p.json"
    assert main(["pool", a, b, "--json", str(out)]) == 0
    summary = json.loads(out.read_text())["summary"]
    mean = sum(accs) / 4
    low, high = stats.t.interval(0.95, 3, loc=mean, scale=stats.sem(accs))
    assert summary["test_acc"]["mean"] == pytest.approx(mean, abs=1e-12)
    assert summary["test_acc"]["ci95_low"] == pytest.approx(low, abs=1e-12)
    assert summary["test_acc"]["ci95_high"] == pytest.approx(high, abs=1e-12)
    assert summary["reached_94"] == 1
    printed = capsys.readouterr().out
    assert f"{mean:.4f} ± {(high - low) / 2:.4f} (95% CI, n=4)" in printed
    assert "(seeds 0, 1, 3, 7)" in printed and "1/4 runs reached 94%" in printed


def test_one_run_has_no_interval(tmp_path, capsys):
    a = _write(tmp_path, "a.json", _record([0], [0.93], [10.0]))
    assert main(["pool", a]) == 0
    assert "0.9300 (n=1: no interval)" in capsys.readouterr().out


def test_times_from_two_machines_are_shown_apart(tmp_path, capsys):
    a_record = _record([0, 1], [0.93, 0.94], [100.0, 110.0])
    b_record = _record([2, 3], [0.935, 0.936], [10.0, 12.0])
    b_record["environment"]["device"] = "NVIDIA H200"
    b_record["environment"]["threads"] = 16
    a, b = _write(tmp_path, "a.json", a_record), _write(tmp_path, "b.json", b_record)
    out = tmp_path / "p.json"
    # Different device names alone do not change the arithmetic (both CPU, eager, fp32 here),
    # so accuracy pools and only the times stay apart.
    assert main(["pool", a, b, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "time: not pooled, the files come from 2 set-ups" in printed
    assert "CPU (x86_64, 2 threads), 2 threads, 1 process, torch 2.13.0: mean time 105.00" in (
        printed
    )
    assert "NVIDIA H200, 16 threads, 1 process, torch 2.13.0: mean time 11.00" in printed
    record = json.loads(out.read_text())
    assert record["times_pooled"] is False and record["summary"]["train_time"] is None
    assert record["summary"]["test_acc"]["mean"] == pytest.approx((0.93 + 0.94 + 0.935 + 0.936) / 4)


def test_settings_that_cannot_change_the_numbers_do_not_block_pooling(tmp_path):
    a = _write(tmp_path, "a.json", _record([0], [0.93], [10.0], data_dir="/x", eval_every=1))
    b = _write(tmp_path, "b.json", _record([1], [0.94], [10.0], data_dir="/y", eval_every=None))
    assert main(["pool", a, b]) == 0


def test_a_record_older_than_a_field_pools_at_that_fields_default(tmp_path, capsys):
    # A record kept from before a field existed ran with the field's default (every field
    # was added with the recipes' earlier behaviour as its default): it pools with a newer
    # record at that default, as a checkpoint resumes, and not with one that changed it.
    default_jitter = TrainConfig().jitter
    old = _write(tmp_path, "old.json", _record([0], [0.93], [10.0]))
    new = _write(tmp_path, "new.json", _record([1], [0.94], [10.0], jitter=default_jitter))
    assert main(["pool", old, new]) == 0
    assert "0.9350" in capsys.readouterr().out
    other = _write(tmp_path, "other.json", _record([2], [0.94], [10.0], jitter=0.1))
    assert main(["pool", old, other]) == 2
    assert f"jitter {default_jitter} vs 0.1" in capsys.readouterr().err
    # a JSON list and the default's tuple are one value
    widths = list(TrainConfig().airbench_widths)
    listed = _write(tmp_path, "listed.json", _record([3], [0.94], [10.0], airbench_widths=widths))
    assert main(["pool", old, listed]) == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"config": {"lr": 0.2}}, "b.json is not the same recipe as "),
        ({"config": {"width": 0.5, "epochs": 3}}, "epochs 2 vs 3; width 1.0 vs 0.5"),
        ({"environment": {"dtype": "bfloat16"}}, "dtype float32 vs bfloat16"),
        ({"environment": {"backend": "triton"}}, "backend eager vs triton"),
        ({"seeds": [0]}, "seed 0 appears in "),
    ],
)
def test_mismatched_files_are_refused_in_one_line(tmp_path, capsys, change, message):
    a = _write(tmp_path, "a.json", _record([0], [0.93], [10.0]))
    other = _record(change.get("seeds", [1]), [0.94], [10.0])
    other["config"].update(change.get("config", {}))
    other["environment"].update(change.get("environment", {}))
    b = _write(tmp_path, "b.json", other)
    out = tmp_path / "p.json"
    assert main(["pool", a, b, "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_seed_twice_in_one_file_is_refused(tmp_path, capsys):
    a = _write(tmp_path, "a.json", _record([4, 4], [0.93, 0.94], [10.0, 10.0]))
    assert main(["pool", a]) == 2
    assert "seed 4 appears twice in " in capsys.readouterr().err


def _corrupt(record: dict, how: str) -> object:
    record = copy.deepcopy(record)
    if how == "list":
        return [record]
    if how == "no runs":
        record["runs"] = []
    elif how == "no config":
        del record["config"]
    elif how == "nan accuracy":
        record["runs"][0]["test_acc"] = None
    elif how == "last epoch disagrees":
        record["runs"][0]["epochs"][-1]["test_acc"] = 0.5
    elif how == "missing field":
        del record["runs"][0]["train_time"]
    elif how == "compare record":
        return {"a": {}, "b": {}, "order": ["A1", "B1"]}
    return record


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("list", "not a record of the trainer's --json"),
        ("no runs", "it holds no runs"),
        ("no config", "not a record of the trainer's --json"),
        ("nan accuracy", "run 1 has test_acc None, not a finite number"),
        ("last epoch disagrees", "run 1's test_acc is not its last epoch's"),
        ("missing field", "run 1 lacks a field the trainer writes"),
        ("compare record", "it is a compare record"),
    ],
)
def test_files_that_are_not_the_trainers_records_are_refused(tmp_path, capsys, how, message):
    path = _write(tmp_path, "bad.json", _corrupt(_record([0], [0.93], [10.0]), how))
    assert main(["pool", path]) == 3
    err = capsys.readouterr().err
    assert f"cannot pool {path}: {message}" in err and len(err.strip().splitlines()) == 1


def test_unreadable_inputs_and_outputs_are_refused_before_writing(tmp_path, capsys):
    good = _write(tmp_path, "a.json", _record([0], [0.93], [10.0]))
    (tmp_path / "text.json").write_text("{not json")
    assert main(["pool", good, str(tmp_path / "missing.json")]) == 3
    assert "missing.json: No such file or directory" in capsys.readouterr().err
    assert main(["pool", good, str(tmp_path / "text.json")]) == 3
    assert "text.json: not JSON (" in capsys.readouterr().err
    assert main(["pool", good, str(Path(good).parent / "." / "a.json")]) == 2
    assert "a file is named twice" in capsys.readouterr().err
    before = Path(good).read_text()
    assert main(["pool", good, "--json", good]) == 2
    assert "is one of the files being pooled" in capsys.readouterr().err
    assert Path(good).read_text() == before
    assert main(["pool", good, "--json", str(tmp_path)]) == 2
    assert "is a folder; name a file" in capsys.readouterr().err


def test_read_record_keeps_every_run(tmp_path):
    path = _write(tmp_path, "a.json", _record([5, 6], [0.9, 0.8], [3.0, 4.0]))
    record = read_record(path)
    assert [r.seed for r in record.runs] == [5, 6]
    assert [r.test_acc for r in record.runs] == [0.9, 0.8]
    assert math.isclose(sum(r.train_time for r in record.runs), 7.0)
