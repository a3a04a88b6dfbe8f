"""Training the tiny family: the loss falls, and a killed run resumes to bit-identical parameters."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import kinetics_jax as kj
from kinetics_jax.tiny import task, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "train_tiny.py")


def _leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_a_few_steps_reduce_the_loss():
    config = train.TrainConfig(steps=40, batch=8, warmup=5)
    state = train.TrainState.create(train.FAMILY["tiny-s"], config)
    losses = []
    for _ in range(40):
        state, loss = train.train_step(state, *task.training_batch(0, int(state.step), config.batch))
        losses.append(float(loss))
    # Uniform guessing over 105 tokens costs ln(105) = 4.65 nats; the fixed structure of the chain (indices,
    # separators, "answer") is learned within tens of steps.
    assert losses[0] > 4.0 and np.mean(losses[-5:]) < losses[0] - 1.0


def test_state_round_trip_resumes_bit_identically(tmp_path):
    config = train.TrainConfig(steps=6, batch=4, warmup=2)

    def steps(state, n):
        for _ in range(n):
            state, _ = train.train_step(state, *task.training_batch(0, int(state.step), config.batch))
        return state

    straight = steps(train.TrainState.create(train.FAMILY["tiny-s"], config), 6)
    half = steps(train.TrainState.create(train.FAMILY["tiny-s"], config), 3)
    train.save_state(half, str(tmp_path))
    resumed = train.restore_state(train.TrainState.create(train.FAMILY["tiny-s"], config),
                                  train.latest_step(str(tmp_path)))
    assert int(resumed.step) == 3
    resumed = steps(resumed, 3)
    for a, b in zip(_leaves((straight.params, straight.opt_state)), _leaves((resumed.params, resumed.opt_state))):
        np.testing.assert_array_equal(a, b)


def _run(workdir: str, output: str, eval_problems: int = 0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, SCRIPT, "--model=tiny-s", "--steps=8", "--batch=4", "--warmup=2",
                             "--checkpoint_every=4", f"--eval_problems={eval_problems}", f"--workdir={workdir}",
                             f"--output={output}"], env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_killed_script_resumes_to_the_same_checkpoint(tmp_path):
    whole = _run(str(tmp_path / "a"), str(tmp_path / "a-out"))
    assert whole.wait(timeout=300) == 0, whole.stderr.read()
    killed = _run(str(tmp_path / "b"), str(tmp_path / "b-out"))
    deadline = time.monotonic() + 300
    while not os.path.isdir(tmp_path / "b" / "tiny-s" / "step_000004") and time.monotonic() < deadline:
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not os.path.exists(tmp_path / "b-out")  # killed before the end
    resumed = _run(str(tmp_path / "b"), str(tmp_path / "b-out"), eval_problems=2)  # not a training setting
    assert resumed.wait(timeout=300) == 0
    assert "resuming tiny-s from step" in resumed.stderr.read()
    a = kj.load_model(str(tmp_path / "a-out"), dtype=jnp.float32)
    b = kj.load_model(str(tmp_path / "b-out"), dtype=jnp.float32)
    for x, y in zip(_leaves(nnx.state(a)), _leaves(nnx.state(b))):
        np.testing.assert_array_equal(x, y)
    record = json.load(open(tmp_path / "b-out" / "training.json"))
    assert record["model"] == "tiny-s" and record["train"]["steps"] == 8 and len(record["loss_every_100"]) == 1
    assert 0.0 <= record["greedy_accuracy"] <= 1.0 and record["eval_problems"] == 2
    assert kj.Tokenizer.from_dir(tmp_path / "b-out").vocab_size == len(task.VOCAB)
