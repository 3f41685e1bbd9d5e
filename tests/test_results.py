"""The run records kept in ``results/``: each is a trainer ``--json`` that ``pool`` reads, and
the files of one recipe on one machine pool (one recipe, one arithmetic, distinct seeds), so
the README's figures can be recomputed from them as seeds are added."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import pytest

from train.cli import main
from train.pool import read_record

RESULTS = Path(__file__).resolve().parent.parent / "results"
RECORDS = sorted(RESULTS.glob("*/*.json"))
#: ``<preset>.<size>.seed<S>.json``: the files of one recipe share everything before ``.seed``.
NAME = re.compile(r"^(?P<recipe>[a-z0-9-]+\.[a-z0-9-]+)\.seed(?P<seeds>[0-9-]+)\.json$")


def _groups() -> dict[str, list[Path]]:
    groups: dict[str, list[Path]] = defaultdict(list)
    for path in RECORDS:
        match = NAME.match(path.name)
        assert match, f"{path.name}: name it <preset>.<size>.seed<S>.json"
        groups[f"{path.parent.name}/{match['recipe']}"].append(path)
    return groups


def test_the_records_are_there():
    assert RECORDS, f"no run records under {RESULTS}"


@pytest.mark.parametrize("path", RECORDS, ids=[f"{p.parent.name}/{p.name}" for p in RECORDS])
def test_each_record_is_the_trainers_and_names_its_seed(path):
    record = read_record(str(path))
    match = NAME.match(path.name)
    seeds = sorted(run.seed for run in record.runs)
    assert seeds[0] == int(match["seeds"].split("-")[0]) == record.config["seed"]
    if match["recipe"].endswith(".full"):  # the whole training set and test set
        assert record.config["train_subset"] is None and record.config["test_subset"] is None


@pytest.mark.parametrize("group", sorted(_groups()))
def test_one_recipes_records_pool(group, capsys):
    files = [str(p) for p in _groups()[group]]
    assert main(["pool", *files]) == 0
    assert "test accuracy" in capsys.readouterr().out
