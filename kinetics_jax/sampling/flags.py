"""absl flags for the sampler, shared by the scripts (Kinetics defaults: T 0.6, top-p 0.95, top-k 20), and for
the continuous engine the scripts stream their samples through:

    --temperature=0.6 --top_p=0.95 --top_k=20 --min_p=0 --max_num_seqs=64 --chunk_steps=16

Call `define_flags()` (and `define_engine_flags()`) at import time of a script, and `config_from_flags()`
(`engine_from_flags()`) in main. The values are checked by
SamplingConfig itself, the one home of the rules: when the flags are parsed, a bad value (--temperature=inf,
--top_p=0) stops the script with SamplingConfig's message naming it, and config_from_flags raises that
ValueError for a value set badly after parsing.
"""

from __future__ import annotations

from typing import Any

from absl import flags

from kinetics_jax.sampling.samplers import SamplingConfig

FLAGS = flags.FLAGS
NAMES = ("temperature", "top_k", "top_p", "min_p")  # flag name = SamplingConfig field


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """Defines the sampler flags, checked together by SamplingConfig when parsed."""
    defaults = SamplingConfig()
    flags.DEFINE_float("temperature", defaults.temperature, "Sampling temperature >= 0 (< 0.02: greedy).",
                       flag_values=flag_values)
    flags.DEFINE_integer("top_k", defaults.top_k, "Top-k >= 0 (0: off).", flag_values=flag_values)
    flags.DEFINE_float("top_p", defaults.top_p, "Nucleus mass in (0, 1] (1: off).", flag_values=flag_values)
    flags.DEFINE_float("min_p", defaults.min_p, "Min-p in [0, 1) (0: off).", flag_values=flag_values)
    flags.register_multi_flags_validator(list(NAMES), _check, flag_values=flag_values)


def _check(values: dict[str, Any]) -> bool:
    """absl validator: the flag values make a SamplingConfig (its ValueError becomes the parse error)."""
    try:
        SamplingConfig(**values)
    except ValueError as e:
        raise flags.ValidationError(str(e)) from e
    return True


def config_from_flags(flag_values: flags.FlagValues = FLAGS) -> SamplingConfig:
    """The SamplingConfig the flags describe (ValueError naming a bad field)."""
    return SamplingConfig(**{name: flag_values[name].value for name in NAMES})


def define_engine_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """Defines --max_num_seqs and --chunk_steps (generate's max_num_seqs and chunk_steps)."""
    flags.DEFINE_integer("max_num_seqs", 64, "Decode slots of the continuous engine: every problem x sample streams "
                         "through them, a slot refilled as its sample finishes (a multiple of the mesh's 'data' "
                         "axis).", lower_bound=1, flag_values=flag_values)
    flags.DEFINE_integer("chunk_steps", 16, "Decode steps per compiled engine call (the host refills slots and "
                         "allocates KV pages between calls).", lower_bound=1, flag_values=flag_values)


def engine_from_flags(flag_values: flags.FlagValues = FLAGS) -> dict[str, int]:
    """generate's engine arguments from the flags: {"max_num_seqs": ..., "chunk_steps": ...}."""
    return {"max_num_seqs": flag_values["max_num_seqs"].value, "chunk_steps": flag_values["chunk_steps"].value}
