"""The embedded tiny Qwen3 family: a synthetic pointer-chasing task (task.py) and its training (train.py). The
study that runs on it is kinetics_jax.study (its `ChaseTask` wraps task.py)."""
