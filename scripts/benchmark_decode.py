"""Decode throughput of `kj.generate` against transformers `generate`, same shapes, random weights.

    python scripts/benchmark_decode.py --shape=tiny --batch=1,16 --prompt_len=64 --new_tokens=128

Both sides decode greedily with no EOS, so every sequence produces exactly --new_tokens tokens; the time covers
prefill plus decode, after one warm-up run (compilation excluded), median of --repeats runs. tokens/s counts
generated tokens over all sequences. --shape is "tiny" (a small Qwen3 for CPU runs) or a preset name (e.g.
qwen3-0.6b, qwen3-8b: real layer shapes, which need an accelerator to be fast). --layers overrides the depth.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

from absl import app, flags, logging

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import kinetics_jax as kj

TINY = kj.Qwen3Config(vocab_size=4096, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=64, tie_word_embeddings=True)

_SHAPE = flags.DEFINE_enum("shape", "tiny", ("tiny",) + kj.Qwen3Config.preset_names(), "Model shape.")
_LAYERS = flags.DEFINE_integer("layers", None, "Override the number of layers.", lower_bound=1)
_BATCH = flags.DEFINE_list("batch", ["1", "16"], "Batch sizes (sequences decoded together).")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 64, "Prompt tokens per sequence.", lower_bound=1)
_NEW = flags.DEFINE_integer("new_tokens", 128, "Generated tokens per sequence.", lower_bound=2)
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs per point (median reported).", lower_bound=1)
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute and parameter dtype.")
_TRANSFORMERS = flags.DEFINE_bool("transformers", True, "Also time transformers generate (needs torch).")


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: compilation / allocator
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _ours(config: kj.Qwen3Config, prompts: np.ndarray, new_tokens: int, dtype) -> float:
    model = kj.Qwen3ForCausalLM(config, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0))
    greedy = kj.SamplingConfig.greedy_config()

    def run():
        result = kj.generate(model, prompts.tolist(), max_new_tokens=new_tokens, sampling=greedy)
        assert (result.lengths == new_tokens).all()

    return _median_seconds(run, _REPEATS.value)


def _transformers(config: kj.Qwen3Config, prompts: np.ndarray, new_tokens: int, dtype: str) -> float:
    import torch
    from transformers import Qwen3Config as HFConfig, Qwen3ForCausalLM as HFModel

    torch.manual_seed(0)
    hf_config = HFConfig(**{k: v for k, v in config.to_hf_dict().items() if k not in ("architectures", "model_type")})
    model = HFModel(hf_config).to(getattr(torch, dtype)).eval()
    ids = torch.as_tensor(prompts, dtype=torch.long)
    mask = torch.ones_like(ids)

    def run():
        with torch.no_grad():
            out = model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                 do_sample=False, pad_token_id=0)
        assert out.shape[1] == ids.shape[1] + new_tokens

    return _median_seconds(run, _REPEATS.value)


def main(argv: list[str]) -> None:
    del argv
    logging.info("process %d of %d, backend %s", jax.process_index(), jax.process_count(), jax.default_backend())
    config = TINY if _SHAPE.value == "tiny" else kj.Qwen3Config.preset(_SHAPE.value)
    if _LAYERS.value:
        config = dataclasses.replace(config, num_hidden_layers=_LAYERS.value)
    rows = []
    for batch in (int(b) for b in _BATCH.value):
        prompts = np.random.default_rng(batch).integers(0, config.vocab_size, (batch, _PROMPT_LEN.value))
        tokens = batch * _NEW.value
        ours = _ours(config, prompts, _NEW.value, jnp.dtype(_DTYPE.value))
        theirs = _transformers(config, prompts, _NEW.value, _DTYPE.value) if _TRANSFORMERS.value else float("nan")
        rows.append((batch, tokens / ours, tokens / theirs, theirs / ours))
    device = jax.devices()[0].device_kind
    print(f"\n{_SHAPE.value} ({config.num_hidden_layers} layers, hidden {config.hidden_size}), {_DTYPE.value}, "
          f"prompt {_PROMPT_LEN.value} + {_NEW.value} new tokens, greedy, device: {device}")
    print(f"{'batch':>5} | {'kinetics_jax tok/s':>18} | {'transformers tok/s':>18} | {'speedup':>7}")
    for batch, ours, theirs, ratio in rows:
        print(f"{batch:>5} | {ours:>18.1f} | {theirs:>18.1f} | {ratio:>6.2f}x")


if __name__ == "__main__":
    app.run(main)
