"""The shipped tiny family: loadable by name, within the size budget, and as accurate as its training record says."""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import pytest

import kinetics_jax as kj
from kinetics_jax.checkpoint import shipped
from kinetics_jax.tiny import task, train


def _size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def test_the_family_fits_in_20_mb():
    assert _size(shipped.TINY_DIR) <= 20 * 2 ** 20


@pytest.mark.parametrize("name", shipped.SHIPPED)
def test_loads_by_name_and_reaches_its_recorded_accuracy(name):
    model = kj.load_checkpoint(name, dtype=jnp.float32)
    assert model.config.to_hf_dict() == train.FAMILY[name].to_hf_dict()
    tokenizer = kj.Tokenizer.from_dir(name)
    problem = task.make_problem(1, 0)
    assert tokenizer.encode(problem.prompt()) == task.encode(problem.prompt())
    with open(os.path.join(shipped.resolve(name), "training.json")) as f:
        record = json.load(f)
    problems = [task.make_problem(record["eval_seed"], i) for i in range(record["eval_problems"])]
    accuracy = train.greedy_accuracy(model, problems)
    # Greedy decoding is deterministic, but a near-tie between two tokens may flip under another XLA build or
    # CPU (summation order): allow two of the 64 problems to differ.
    assert abs(accuracy - record["greedy_accuracy"]) <= 2 / record["eval_problems"] + 1e-9
    assert record["greedy_accuracy"] > 100 * task.CHANCE  # far above guessing


def test_a_directory_of_the_same_name_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert shipped.resolve("tiny-s") == os.path.join(shipped.TINY_DIR, "tiny-s")
    os.mkdir("tiny-s")
    assert shipped.resolve("tiny-s") == "tiny-s"
    assert shipped.resolve("no-such-model") == "no-such-model"
