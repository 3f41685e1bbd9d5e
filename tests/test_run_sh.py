"""``./run.sh`` on an owner's Python: it uses the torch that is there, installs only what is
missing, starts with no network when nothing is, and says in one line what it could not do.

An "owner's Python" is built here as a venv that sees this test run's own packages (or all
of them but one) through ``site.addsitedir``, as a system Python with torch installed would.
Every run is offline: ``PIP_NO_INDEX=1`` makes any attempt to download fail at once.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import sysconfig
import venv

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
SITE_PACKAGES = pathlib.Path(sysconfig.get_paths()["purelib"])
HANG_GUARD_S = 1800  # a guard against a hang, not a judgement of speed


def _owner_python(tmp_path: pathlib.Path, site_dir: pathlib.Path) -> pathlib.Path:
    """A Python whose packages are those of ``site_dir`` (without pip's network)."""
    home = tmp_path / "owner"
    venv.EnvBuilder(with_pip=False).create(home)
    purelib = next(home.glob("lib/python*/site-packages"))
    (purelib / "owner_packages.pth").write_text(
        f"import site; site.addsitedir({str(site_dir)!r})\n"
    )
    return home / "bin" / "python"


def _run_sh(tmp_path: pathlib.Path, python: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=python, VENV=str(tmp_path / "host-venv"), PIP_NO_INDEX="1")
    env.pop("TRITON_INTERPRET", None)  # as an owner runs it
    return subprocess.run(
        ["bash", str(REPO / "run.sh"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )


def _without(tmp_path: pathlib.Path, distribution: str) -> pathlib.Path:
    """A copy of this run's site-packages (as links) with one distribution taken out."""
    overlay = tmp_path / "site-without"
    overlay.mkdir()
    for entry in SITE_PACKAGES.iterdir():
        name = entry.name.lower()
        if name == distribution or name.startswith(f"{distribution}-"):
            continue
        (overlay / entry.name).symlink_to(entry)
    return overlay


def test_an_owners_python_with_everything_starts_offline(tmp_path):
    owner = _owner_python(tmp_path, SITE_PACKAGES)
    done = _run_sh(tmp_path, str(owner), "train", "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m train")
    assert f"setup: using {owner}" in done.stderr
    assert "installing" not in done.stderr  # nothing was missing, nothing was fetched
    # The venv layer sees the owner's torch, not a copy of it.
    host_python = tmp_path / "host-venv" / "bin" / "python"
    where = subprocess.run(
        [str(host_python), "-c", "import torch; print(torch.__file__)"],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert where.stdout.strip().startswith(str(SITE_PACKAGES))


def test_a_missing_package_offline_is_one_clear_line(tmp_path):
    owner = _owner_python(tmp_path, _without(tmp_path, "tqdm"))
    done = _run_sh(tmp_path, str(owner), "train", "--help")
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("run.sh: could not install tqdm>=")
    assert "no network?" in last and "pip.log" in last
    assert "setup: installing what" in done.stderr and "tqdm" in done.stderr


def test_an_owners_torch_is_never_replaced(tmp_path):
    """torch missing from the owner's Python is refused, not downloaded (gigabytes of the
    wrong build)."""
    owner = _owner_python(tmp_path, _without(tmp_path, "torch"))
    done = _run_sh(tmp_path, str(owner), "train", "--help")
    assert done.returncode == 2
    assert "cannot import torch" in done.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("python", ["/nonexistent/python3", sys.executable + "-missing"])
def test_python_that_is_not_a_program_is_named(tmp_path, python):
    done = _run_sh(tmp_path, python, "train", "--help")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"run.sh: PYTHON={python} is not a program; name a python executable"
    )
