"""absl flags for the sampler, shared by the scripts (Kinetics defaults: T 0.6, top-p 0.95, top-k 20):

    --temperature=0.6 --top_p=0.95 --top_k=20 --min_p=0

Call `define_flags()` at import time of a script, and `config_from_flags()` in main (a bad value raises
ValueError naming it).
"""

from __future__ import annotations

from absl import flags

from kinetics_jax.sampling.samplers import SamplingConfig

FLAGS = flags.FLAGS


def define_flags() -> None:
    defaults = SamplingConfig()
    flags.DEFINE_float("temperature", defaults.temperature, "Sampling temperature (< 0.02: greedy).",
                       lower_bound=0.0)
    flags.DEFINE_float("top_p", defaults.top_p, "Nucleus mass in (0, 1] (1: off).")
    flags.DEFINE_integer("top_k", defaults.top_k, "Top-k (0: off).", lower_bound=0)
    flags.DEFINE_float("min_p", defaults.min_p, "Min-p in [0, 1) (0: off).")


def config_from_flags() -> SamplingConfig:
    return SamplingConfig(temperature=FLAGS.temperature, top_k=FLAGS.top_k, top_p=FLAGS.top_p, min_p=FLAGS.min_p)
