"""Readers for the committed reference results (experiments/results/<name>/) that the test_reference_* files pin."""
import csv
import json
import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def results_dir(name: str) -> str:
    return os.path.join(REPO, "experiments", "results", name)


def read_json(name: str, *parts: str):
    """A JSON file of results ``name``, e.g. read_json("kaplan_cpu_lr_grid", "noise", "bcrit.json")."""
    with open(os.path.join(results_dir(name), *parts)) as f:
        return json.load(f)


def read_runs(name: str) -> list[dict]:
    """The rows of results ``name``'s runs.csv."""
    with open(os.path.join(results_dir(name), "runs.csv")) as f:
        return list(csv.DictReader(f))
