"""The checkpoints shipped inside the package, loadable by name: the trained tiny family.

    model = kinetics_jax.load_checkpoint("tiny-m", dtype=jnp.float32)
    tokenizer = kinetics_jax.Tokenizer.from_dir("tiny-m")

Each is an orbax checkpoint directory under kinetics_jax/assets/tiny/<name>/ (config.json, params/, the task's
word-level tokenizer, training.json with its training run and recorded accuracy); scripts/train_tiny.py rebuilds
them (the commands are in the README).
"""

from __future__ import annotations

import os

TINY_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "tiny")
SHIPPED: tuple[str, ...] = ("tiny-s", "tiny-m", "tiny-l")


def resolve(path: str | os.PathLike) -> str:
    """`path` itself when it exists; the shipped checkpoint's directory when `path` is one of SHIPPED; otherwise
    `path` unchanged (the loader then reports it missing). An existing directory of the same name wins."""
    path = os.fspath(path)
    if not os.path.exists(path) and path in SHIPPED:
        return os.path.join(TINY_DIR, path)
    return path
