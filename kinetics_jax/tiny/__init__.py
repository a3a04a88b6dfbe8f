"""The embedded tiny Qwen3 family: a synthetic pointer-chasing task (task.py) and its training (train.py)."""
