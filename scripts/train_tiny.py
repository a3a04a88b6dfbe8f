"""Trains one model of the embedded tiny Qwen3 family on the pointer-chasing task; resumable to the bit.

    python scripts/train_tiny.py --model=tiny-s --steps=2000 --workdir=runs/train \
        --output=kinetics_jax/assets/tiny/tiny-s

Every --checkpoint_every steps the parameters, the optimizer state and the step (which is also the data
position) are saved under <workdir>/<model>/; a killed run restarted with the same flags continues from the last
save and ends with the same parameters as an uninterrupted run. At the end the model is written in the project's
checkpoint format (orbax params + config.json) with the task's tokenizer and a training.json (flags, loss
curve, wall time), and its greedy accuracy on --eval_problems held-out problems is logged.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

from absl import flags, logging

import jax
import numpy as np
from tqdm import tqdm

import kinetics_jax as kj
from kinetics_jax import cli, outputs
from kinetics_jax.tiny import task, train

_MODEL = flags.DEFINE_enum("model", "tiny-s", sorted(train.FAMILY), "Which model of the family.")
_STEPS = flags.DEFINE_integer("steps", train.TrainConfig.steps, "Training steps.", lower_bound=1)
_BATCH = flags.DEFINE_integer("batch", train.TrainConfig.batch,
                              "Problems per long step (a short step has 4x as many).", lower_bound=1)
_LR = flags.DEFINE_float("lr", None, "Peak learning rate (default: the model's, train.PEAK_LR).")
_WARMUP = flags.DEFINE_integer("warmup", train.TrainConfig.warmup, "Warm-up steps.", lower_bound=0)
_SEED = flags.DEFINE_integer("seed", 0, "Parameter init seed.")
_DATA_SEED = flags.DEFINE_integer("data_seed", 0, "Training problems seed (evaluation uses seed 1).")
_WORKDIR = flags.DEFINE_string("workdir", "runs/train", "Where resumable training checkpoints go.")
_EVERY = flags.DEFINE_integer("checkpoint_every", 250, "Steps between training checkpoints.", lower_bound=1)
_OUTPUT = flags.DEFINE_string("output", None, "Export directory (default: <workdir>/<model>/final).")
_EVAL = flags.DEFINE_integer("eval_problems", 64, "Held-out problems for the final greedy accuracy.",
                             lower_bound=0)
EVAL_SEED = 1


def main(argv: list[str]) -> int:
    del argv
    lr = train.PEAK_LR[_MODEL.value] if _LR.value is None else _LR.value
    config = train.TrainConfig(steps=_STEPS.value, batch=_BATCH.value, lr=lr, warmup=_WARMUP.value,
                               seed=_SEED.value, data_seed=_DATA_SEED.value)
    workdir = os.path.join(_WORKDIR.value, _MODEL.value)
    output = outputs.check_writable(_OUTPUT.value or os.path.join(workdir, "final"), directory=True)
    # One training per workdir: a second one is refused before it reads or writes anything there.
    with outputs.exclusive(workdir, directory=True):
        return _train(config, workdir, output)


def _train(config: train.TrainConfig, workdir: str, output: str) -> int:
    """Trains (resuming from workdir's latest checkpoint), then exports to `output`."""
    os.makedirs(workdir, exist_ok=True)
    run = {"model": _MODEL.value, "train": dataclasses.asdict(config),
           "model_config": train.FAMILY[_MODEL.value].to_hf_dict()}
    run_file = os.path.join(workdir, "run.json")
    if os.path.exists(run_file):
        with open(run_file) as f:
            previous = json.load(f)
        if previous["run"] != run:
            raise ValueError(f"{workdir} holds a run with other settings ({previous['run']}); use another "
                             f"--workdir or the same flags")
        history = previous["history"]
    else:
        history = {"loss": [], "seconds": 0.0}
    state = train.TrainState.create(train.FAMILY[_MODEL.value], config)
    if (path := train.latest_step(workdir)) is not None:
        state = train.restore_state(state, path)
        history["loss"] = history["loss"][:int(state.step)]  # losses logged after that save are recomputed
        logging.info("resuming %s from step %d", _MODEL.value, int(state.step))

    def save() -> None:
        train.save_state(state, workdir)
        with outputs.replacing(run_file) as f:
            json.dump({"run": run, "history": history}, f)

    logging.info("%s: %d parameters, %d steps of %d problems", _MODEL.value,
                 train.FAMILY[_MODEL.value].num_params(), config.steps, config.batch)
    start, begin = time.perf_counter(), int(state.step)
    with tqdm(total=config.steps, initial=begin, unit="step", desc=_MODEL.value) as bar:
        while int(state.step) < config.steps:
            tokens, mask = task.training_batch(config.data_seed, int(state.step), config.batch)
            state, loss = train.train_step(state, tokens, mask)
            history["loss"].append(float(loss))
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(history['loss'][-50:]):.4f}")
            if int(state.step) % _EVERY.value == 0 or int(state.step) == config.steps:
                history["seconds"] += time.perf_counter() - start
                start = time.perf_counter()
                save()
    history["seconds"] += time.perf_counter() - start
    model = state.model()
    problems = [task.make_problem(EVAL_SEED, i) for i in range(_EVAL.value)]
    accuracy = train.greedy_accuracy(model, problems) if problems else None
    # The export is assembled beside the output and renamed into place whole: never a checkpoint without its
    # tokenizer or record.
    staging = outputs.temporary_path(output, ".export")
    kj.save_checkpoint(model, staging)
    task.write_tokenizer(staging)
    with open(os.path.join(staging, "training.json"), "w") as f:
        json.dump({**run, "train_seconds": round(history["seconds"], 1),
                   "final_loss": float(np.mean(history["loss"][-100:])), "greedy_accuracy": accuracy,
                   "eval_problems": _EVAL.value, "eval_seed": EVAL_SEED,
                   "loss_every_100": [round(float(np.mean(history["loss"][i:i + 100])), 4)
                                      for i in range(0, len(history["loss"]), 100)],
                   "jax": jax.__version__}, f, indent=1)
    outputs.remove(output)
    os.replace(staging, output)
    logging.info("%s: final loss %.4f, greedy accuracy %s on %d held-out problems, %.0f s of training; wrote %s",
                 _MODEL.value, np.mean(history["loss"][-100:]), accuracy, _EVAL.value, history["seconds"], output)
    return 0


if __name__ == "__main__":
    cli.run(main)
