"""The embedded tiny Qwen3 family: a synthetic pointer-chasing task (task.py), its training (train.py), and the
miniature Kinetics study on it (study.py: runs and records; report.py: the table and figure)."""
