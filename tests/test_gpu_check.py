"""``./run.sh gpu-check`` (:mod:`bench.gpu_check`): refuses a machine without a GPU in one
line, walks its whole plan on the CPU with ``--dry-run``, records failed and unfinished
stages, and exits non-zero when a check failed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cifar_archive import make_archive  # tests/ is on sys.path

from bench import gpu_check
from bench.gpu_check import Stage, run_stage

REPO = Path(__file__).resolve().parent.parent
HANG_GUARD_S = 1800  # a guard against a hang, not a judgement of speed


def _gpu_check(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ if env is None else env)
    env.pop("TRITON_INTERPRET", None)  # as an owner runs it
    return subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )


@pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="this machine has a GPU: gpu-check runs"
)
def test_without_a_gpu_it_says_so_in_one_line_and_exits_2(tmp_path):
    done = _gpu_check("--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("error: no CUDA GPU is visible to torch")
    assert "--dry-run" in done.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was made


@pytest.mark.parametrize(
    "args,message",
    [
        (["--runs", "0"], "error: --runs must be at least 1; got 0"),
        (["--data-dir", "/nonexistent/cifar"], "error: --data-dir /nonexistent/cifar does not"),
    ],
)
def test_bad_arguments_are_one_line(tmp_path, args, message):
    done = _gpu_check("--dry-run", "--out", str(tmp_path / "out"), *args)
    assert done.returncode == 2
    assert done.stderr.startswith(message) and done.stderr.count("\n") == 1


def test_out_that_is_a_file_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    done = _gpu_check("--dry-run", "--out", str(blocker))
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: --out {blocker} is a file; name a folder")


@pytest.mark.slow
def test_dry_run_walks_the_whole_plan_from_carried_data(tmp_path):
    """The plan end to end on the CPU: a carried data folder rebuilt by its own script (here
    one that writes a small synthetic archive), the kernel tests, the bench, the recipe."""
    carried = tmp_path / "cifar10-carry"
    carried.mkdir()
    (carried / "rebuild.py").write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(REPO / 'tests')!r})\n"
        "from cifar_archive import make_archive\n"
        "make_archive(sys.argv[1])\n"
    )
    out = tmp_path / "out"
    done = _gpu_check("--dry-run", "--out", str(out), "--runs", "2", "--data-dir", str(carried))
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert [s["name"] for s in summary["stages"]] == [
        "data",
        "kernels",
        "bench",
        "train-final",
        "train-speedrun-2025",
    ]
    assert all(s["status"] == "passed" for s in summary["stages"]), summary["stages"]
    assert summary["passed"] and summary["failed"] == []
    counts = summary["kernel_tests"]
    assert counts["passed"] >= 3 and counts["failures"] == counts["errors"] == 0
    assert {(r["op"], r["backend"]) for r in summary["bench"]["rows"]} >= {
        ("augment b512", "eager")
    }
    train = summary["train"]["final"]
    assert train["summary"]["runs"] == 2 and len(train["runs"]) == 2
    assert all(0.0 <= run["test_acc"] <= 1.0 for run in train["runs"])
    assert summary["environment"]["dry_run"] is True
    text = (out / "summary.md").read_text()
    assert text.startswith("# gpu-check (dry run: no GPU figures)")
    assert "all checks passed" in text and "| train-final | passed | 0 |" in text


def test_a_failed_stage_is_recorded_and_the_next_still_runs(tmp_path):
    py = sys.executable
    failing = Stage("first", [py, "-c", "import sys; print('it broke here'); sys.exit(3)"], 60)
    result = run_stage(failing, tmp_path, seconds_left=600, skip=None)
    assert (result.status, result.exit_code, result.detail) == ("failed", 3, "it broke here")
    assert (tmp_path / "first.log").read_text() == "it broke here\n"
    ok = run_stage(Stage("second", [py, "-c", "print('fine')"], 60), tmp_path, 600, None)
    assert (ok.status, ok.exit_code) == ("passed", 0)


def test_a_stage_past_its_limit_is_stopped_and_recorded(tmp_path):
    """A stage that never ends (it waits for an event no one sets) is stopped at its limit."""
    forever = "import threading; threading.Event().wait()"
    never = Stage("stuck", [sys.executable, "-c", forever], 5)
    result = run_stage(never, tmp_path, seconds_left=600, skip=None)
    assert (result.status, result.exit_code) == ("timed out", None)


def test_skips_and_a_spent_budget_run_nothing(tmp_path):
    stage = Stage("later", [sys.executable, "-c", "raise SystemExit(1)"], 60)
    assert run_stage(stage, tmp_path, 600, "no data set").status == "skipped"
    spent = run_stage(stage, tmp_path, 1, None)
    assert (spent.status, spent.detail) == ("skipped", "the --budget was spent")
    assert not (tmp_path / "later.log").exists()


def test_any_failed_check_makes_the_exit_code_1(tmp_path, monkeypatch):
    """main() with a plan of two quick stages, one failing: exit 1, both recorded, the
    summary files written, the failure named."""
    py = sys.executable
    plan = [
        Stage("kernels", [py, "-c", "raise SystemExit(1)"], 60),
        Stage("bench", [py, "-c", "print('ok')"], 60),
    ]
    monkeypatch.setattr(gpu_check, "make_plan", lambda *args: plan)
    monkeypatch.delenv("CIFAR10_DIR", raising=False)
    monkeypatch.setattr(gpu_check, "REPO", tmp_path)  # no .carry folder there
    code = gpu_check.main(["--dry-run", "--out", str(tmp_path / "out")])
    assert code == 1
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [s["status"] for s in summary["stages"]] == ["failed", "passed"]
    assert summary["failed"] == ["kernels: failed ()"] and not summary["passed"]
    assert summary["accuracy_measured"] is False
    assert "accuracy: not measured" in (tmp_path / "out" / "summary.md").read_text()


def test_the_plan_on_a_gpu_runs_compiled_kernels_on_cuda(tmp_path):
    """What a GPU owner's run would do, read from the plan (no GPU needed to read it)."""
    archive = make_archive(tmp_path / "data", records_per_file=50)
    args = gpu_check.parse_args(["--runs", "10"])
    plan = gpu_check.make_plan(args, tmp_path / "out", archive.parent, False)
    by_name = {s.name: s for s in plan}
    assert list(by_name) == ["kernels", "bench", "train-final", "train-speedrun-2025"]
    assert by_name["train-speedrun-2025"].command[3:5] == ["--preset", "speedrun-2025"]
    assert by_name["kernels"].env["TRITON_INTERPRET"] == "0"
    assert "-m" in by_name["kernels"].command and "gpu" in by_name["kernels"].command
    train = by_name["train-final"].command
    assert train[train.index("--runs") + 1] == "10"
    assert train[train.index("--device") + 1] == "cuda"
    assert train[train.index("--data-dir") + 1] == str(archive.parent)
    assert sum(s.limit_s for s in plan) <= 8 * 60  # the 8-minute promise, stage by stage
    assert "--no-aot" in by_name["bench"].command  # CI compiles the AOT report, not the GPU


def test_unknown_recipe_is_refused_in_one_line():
    done = _gpu_check("--dry-run", "--recipes", "final,airbench95")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: --recipes 'final,airbench95': unknown recipe airbench95; use 'final' or "
        "preset names (python -m train --list-presets)"
    ]
