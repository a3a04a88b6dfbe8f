"""Per-device memory of a request on candidate meshes: parameters under the sharding rules plus the KV cache the
engine would allocate. No device is used (abstract model, abstract meshes), so it plans pods from a laptop.

    python scripts/pod_memory.py --preset=qwen3-32b --meshes=8x1,4x2,2x4,1x8 --prompt_len=1024 \
        --max_new_tokens=31744 --num_samples=32 --device_memory_gib=80

--meshes lists data x model shapes. The numbers (kinetics_jax.sharding.planning.memory_per_device) are exactly what
`generate` sizes and checks: the cache plan
of each data shard (pages rounded up to 64, page summaries included; --attention=block_topk-1024:score=quest adds
the min/max summaries), the KV heads split (or replicated) over "model", and every parameter split by
kinetics_jax.sharding.axes.RULES. Activations and XLA workspace come on top.
"""

from __future__ import annotations


import jax.numpy as jnp
from absl import flags

import kinetics_jax as kj
from kinetics_jax import cli
from kinetics_jax.policies import flags as attention_flags
from kinetics_jax.sharding import planning

_PRESET = flags.DEFINE_string("preset", "qwen3-32b", f"Model preset ({', '.join(kj.Qwen3Config.preset_names())}).")
_CONFIG = flags.DEFINE_string("config", None, "HF config.json instead of --preset.")
_MESHES = flags.DEFINE_list("meshes", ["8x1", "4x2", "2x4", "1x8"], "data x model shapes to compare.")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 1024, "Prompt tokens.", lower_bound=1)
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 31744, "Generated tokens per sample.", lower_bound=1)
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 32, "Samples per prompt (N).", lower_bound=1)
_NUM_PROMPTS = flags.DEFINE_integer("num_prompts", 1, "Prompts decoded together.", lower_bound=1)
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "Parameter and cache dtype.")
_DEVICE_GIB = flags.DEFINE_float("device_memory_gib", None, "Device memory, to mark which meshes fit.")
attention_flags.define_flags()


def _shape(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"--meshes entries are DATAxMODEL, e.g. 4x2; got {text!r}")
    return int(parts[0]), int(parts[1])


def main(argv: list[str]) -> int:
    del argv
    attention = attention_flags.config_from_flags()
    config = (kj.Qwen3Config.from_hf_config(_CONFIG.value) if _CONFIG.value
              else kj.Qwen3Config.preset(_PRESET.value))
    shapes = [_shape(m) for m in _MESHES.value]
    gib = 2 ** 30
    name = _CONFIG.value or _PRESET.value
    print(f"{name}: {_NUM_PROMPTS.value} prompt(s) x {_NUM_SAMPLES.value} samples, {_PROMPT_LEN.value} + "
          f"{_MAX_NEW.value} tokens, {_DTYPE.value}, {attention.describe()}")
    print("| mesh (data x model) | devices | params GiB/device | KV cache GiB/device | total GiB/device |"
          + (" fits |" if _DEVICE_GIB.value else ""))
    print("|---|---|---|---|---|" + ("---|" if _DEVICE_GIB.value else ""))
    for data, model_axis in shapes:
        try:
            memory = planning.memory_per_device(
                config, (data, model_axis), prompt_lengths=[_PROMPT_LEN.value] * _NUM_PROMPTS.value,
                num_samples=_NUM_SAMPLES.value, max_new_tokens=_MAX_NEW.value, attention=attention,
                dtype=jnp.dtype(_DTYPE.value))
        except ValueError as e:
            print(f"| {data} x {model_axis} | {data * model_axis} | not possible: {e} |")
            continue
        total = (memory.params + memory.kv_cache) / gib
        copies = f" ({memory.kv_replicas} copies/KV head)" if memory.kv_replicas > 1 else ""
        fits = (f" {'yes' if total <= _DEVICE_GIB.value else 'no'} |" if _DEVICE_GIB.value else "")
        print(f"| {data} x {model_axis} | {data * model_axis} | {memory.params / gib:.1f} | "
              f"{memory.kv_cache / gib:.1f}{copies} | {total:.1f} |{fits}")
    return 0


if __name__ == "__main__":
    cli.run(main)
