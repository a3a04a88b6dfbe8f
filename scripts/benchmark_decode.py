"""Decode benchmarks: attention per step, the whole model's decode at long context, and the capacity check
(generate against transformers, and the continuous engine, are scripts/benchmark_engine.py).

    # one layer of decode attention at Qwen3-8B head shapes (selection + kernel), per step
    python scripts/benchmark_decode.py --mode=attention --context=4096,16384,32768,65536 --batch=1,16,64 \
        --attention=dense@xla,dense@pallas,cascade@pallas,jax-peer,block_topk-256@pallas,block_topk-1024@pallas
    # the whole model's decode step (every layer, MLP, logits, greedy pick) on a cache of --context tokens
    python scripts/benchmark_decode.py --mode=model --shape=qwen3-8b --layers=4 --context=32768 --batch=64 \
        --attention=dense@pallas,block_topk-1024@pallas
    # the same samples under growing max_new_tokens: time must follow the tokens decoded, not the capacity
    python scripts/benchmark_decode.py --mode=capacity --budgets=256,512,2048 --attention=dense@xla

Attention variants (--attention): <policy label>@<xla|pallas> (a kinetics_jax.policies label, its cache pages:
dense@xla, dense@pallas, block_topk-1024@pallas = sink 4, local 0, 64 blocks of 16 tokens, sliding_window-512@xla),
cascade@pallas (dense, the batch = N samples of one prompt whose first context - 512 tokens are shared pages),
jax-peer (jax.experimental.pallas.ops.gpu.decode_attention on contiguous KV; GPU only). Caches are laid out by
kinetics_jax.cache.PagedLayout and hold random K/V (no prefill: a 32K-token prefill is not what is measured);
model mode runs generate's step on this process's mesh (shard_map included). Times are medians of
--repeats runs after a warm-up; each run executes --steps steps inside one jit (a lax.fori_loop feeding each
step's output into the next), so dispatch overhead is amortised. "GB/s" divides the bytes the variant must read
(K/V of the attended tokens, page summaries for block top-k) by the time. Off GPU the Pallas kernels only run in
interpret mode, so their rows say "not measured".
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable

from absl import flags, logging

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import kinetics_jax as kj
from kinetics_jax import cli
from kinetics_jax.attention import decode_attention
from kinetics_jax.cache import CachePlan, KVCache, PagedLayout
from kinetics_jax.cost.analytic import decode_step_reads
from kinetics_jax.sampling.decode import decode_step

TINY = kj.Qwen3Config(vocab_size=4096, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=64, tie_word_embeddings=True)
OWN_TOKENS = 512  # cascade: tokens each sample owns after the shared prompt

_MODE = flags.DEFINE_enum("mode", "attention", ["attention", "model", "capacity"], "What to time.")
_SHAPE = flags.DEFINE_enum("shape", "qwen3-8b", ("tiny",) + kj.Qwen3Config.preset_names(), "Model / head shapes.")
_LAYERS = flags.DEFINE_integer("layers", None, "Override the number of layers (model, capacity modes).",
                               lower_bound=1)
_BATCH = cli.define_int_list("batch", [1, 16], "Batch sizes (sequences decoded together).")
_CONTEXT = cli.define_int_list("context", [4096, 16384], "Cached tokens per sequence (attention, model).")
_ATTENTION = flags.DEFINE_list("attention", ["dense@xla", "block_topk-1024@xla"], "Attention variants.")
_DENSE_LAYERS = cli.define_int_list("dense_layers", [0], "Layers kept dense by sparse variants (model mode).",
                                     lower_bound=0)
_STEPS = flags.DEFINE_integer("steps", 8, "Decode steps per timed run.", lower_bound=1)
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs per point (median reported).", lower_bound=1)
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["float32", "bfloat16"], "Compute, parameter and cache dtype.")
_BUDGETS = cli.define_int_list("budgets", [256, 512, 2048], "max_new_tokens values (capacity mode).")
_PROMPTS = flags.DEFINE_integer("prompts", 32, "Prompts (capacity mode).", lower_bound=1)
_SAMPLES = flags.DEFINE_integer("samples", 8, "Samples per prompt (capacity mode).", lower_bound=1)


@dataclasses.dataclass(frozen=True)
class Variant:
    """One row family of the table: an attention config (None for jax's peer kernel); cascade: shared prompt."""

    name: str
    config: kj.AttentionConfig | None
    cascade: bool = False

    @classmethod
    def parse(cls, spec: str, dense_layers: tuple[int, ...]) -> "Variant":
        """"jax-peer", "cascade@pallas", or "<policy label>@<xla|pallas>" (kinetics_jax.policies labels, e.g.
        dense@xla, block_topk-1024@pallas)."""
        if spec == "jax-peer":
            return cls(spec, None)
        label, at, backend = spec.rpartition("@")
        if not at or backend not in kj.policies.BACKENDS:
            raise ValueError(f"--attention: unknown variant {spec!r} (<policy label>@<xla|pallas>, e.g. dense@xla "
                             f"or block_topk-1024@pallas; cascade@pallas; jax-peer)")
        if label == "cascade":
            if backend != "pallas":
                raise ValueError("--attention: the cascade is a Pallas kernel path, use cascade@pallas")
            return cls(spec, kj.AttentionConfig(backend=backend), cascade=True)
        try:
            config = kj.AttentionConfig.parse(label, backend=backend, dense_layers=dense_layers)
        except ValueError as e:
            raise ValueError(f"--attention {spec}: {e}") from None
        return cls(spec, config)

    def unavailable(self) -> str | None:
        """Why this variant cannot be timed on this platform (None if it can)."""
        pallas = self.config is None or self.config.backend == "pallas"
        if pallas and jax.default_backend() != "gpu" and not (self.config and jax.default_backend() == "tpu"):
            return f"not measured ({jax.default_backend()}: Pallas runs in interpret mode only)"
        return None


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    jax.block_until_ready(fn())  # warm-up: compilation, allocation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _plan(variant: Variant, batch: int, context: int) -> CachePlan:
    """The cache plan of B sequences of `context` cached tokens in the variant's layout: the cascade's are the
    samples of one prompt of context - OWN_TOKENS tokens (its full pages shared), the others B one-sample prompts."""
    layout = PagedLayout.of(variant.config)
    if variant.cascade:
        return layout.plan([context - OWN_TOKENS], batch, OWN_TOKENS + 1)
    return layout.plan([context] * batch, 1, 1)


def _random_cache(key: jax.Array, config: kj.Qwen3Config, variant: Variant, plan: CachePlan, dtype) -> KVCache:
    """Random K/V pools of the plan's pages (no prefill: a 32K-token prefill is not what is measured), with
    their page summaries."""
    layout = PagedLayout.of(variant.config)
    kk, kv = jax.random.split(key)
    shape = layout.pool_shape(config, plan.num_pages)
    return KVCache.from_pools(jax.random.normal(kk, shape, dtype), jax.random.normal(kv, shape, dtype),
                              layout.summaries)


def _bytes_needed(variant: Variant, batch: int, context: int, config: kj.Qwen3Config, dtype) -> int:
    """Bytes one decode step of one layer must read: the attended K/V (the cascade's shared prompt once) and,
    for block top-k, the summaries of the blocks scored (cost.analytic.decode_step_reads)."""
    one_layer = dataclasses.replace(config, num_hidden_layers=1)
    attention = dataclasses.replace(variant.config or kj.AttentionConfig(), dense_layers=())
    prompt_len, prompts, samples = ((context - OWN_TOKENS, 1, batch) if variant.cascade else (context, batch, 1))
    reads = decode_step_reads(one_layer, attention, context=context, prompt_len=prompt_len, num_prompts=prompts,
                              num_samples=samples).bytes(one_layer, attention, dtype)
    return reads["kv"] + reads["summaries"]


def _attention_step(variant: Variant, batch: int, context: int, config: kj.Qwen3Config, dtype
                    ) -> Callable[[], jax.Array]:
    """A no-argument callable running --steps decode-attention steps of one layer; returns the last output."""
    hq, hkv, d = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    key_q, key_kv = jax.random.split(jax.random.key(batch * 7919 + context))
    q = jax.random.normal(key_q, (batch, hq, d), dtype)
    lengths = jnp.full((batch,), context, jnp.int32)
    steps = _STEPS.value
    if variant.config is None:  # jax's own Pallas decode attention, contiguous KV
        from jax.experimental.pallas.ops.gpu import decode_attention as peer
        kk, kv = jax.random.split(key_kv)
        k = jax.random.normal(kk, (batch, context, hkv, d), dtype)
        v = jax.random.normal(kv, (batch, context, hkv, d), dtype)

        @jax.jit
        def run(q, k, v, lengths):
            return jax.lax.fori_loop(0, steps, lambda i, x: peer.gqa(x, k, v, kv_seq_len=lengths), q)

        return lambda: run(q, k, v, lengths)
    attention = dataclasses.replace(variant.config, dense_layers=())
    plan = _plan(variant, batch, context)
    cache = _random_cache(key_kv, dataclasses.replace(config, num_hidden_layers=1), variant, plan, dtype)
    table, shared = plan.page_table, plan.shared_pages_per_prompt

    @jax.jit
    def run(q, cache, table, lengths, shared):
        def body(i, x):
            out, _ = decode_attention(x, cache, jnp.int32(0), table, lengths, attention,
                                      num_samples=batch if variant.cascade else 1,
                                      shared_pages=shared if variant.cascade else None)
            return out
        return jax.lax.fori_loop(0, steps, body, q)

    table, shared = jnp.asarray(table), jnp.asarray(shared)
    return lambda: run(q, cache, table, lengths, shared)


def _model_step(variant: Variant, model: kj.Qwen3ForCausalLM, batch: int, context: int, dtype
                ) -> Callable[[], jax.Array]:
    """A no-argument callable running --steps full-model decode steps (greedy) on a cache of `context` tokens,
    the step as generate's loop runs it: on this process's mesh (kj.sharding.local_mesh), the cache write, page
    selection and kernels inside its shard_map."""
    config, steps = model.config, _STEPS.value
    attention = variant.config
    plan = _plan(variant, batch, context)
    cache = _random_cache(jax.random.key(context + batch), config, variant, plan, dtype)
    table, shared = plan.page_table, plan.shared_pages_per_prompt
    graphdef, state = nnx.split(model)
    num_samples = batch if variant.cascade else 1
    mesh = kj.sharding.local_mesh()

    @jax.jit
    def run(state, cache, table, shared):
        model = nnx.merge(graphdef, state)

        def body(i, carry):
            tokens, cache = carry
            positions = jnp.full((batch,), context - steps, jnp.int32) + i  # the cache ends at `context`
            logits, cache, _ = decode_step(model, cache, tokens, positions, table, jnp.ones((batch,), bool),
                                           attention, num_samples, shared if variant.cascade else None, mesh)
            return jnp.argmax(logits, axis=-1).astype(jnp.int32), cache

        tokens, _ = jax.lax.fori_loop(0, steps, body, (jnp.zeros((batch,), jnp.int32), cache))
        return tokens

    table, shared = jnp.asarray(table), jnp.asarray(shared)
    return lambda: run(state, cache, table, shared)


def _config() -> kj.Qwen3Config:
    config = TINY if _SHAPE.value == "tiny" else kj.Qwen3Config.preset(_SHAPE.value)
    if _LAYERS.value:
        config = dataclasses.replace(config, num_hidden_layers=_LAYERS.value)
    return config


def _device() -> str:
    return f"{jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}"


def _sweep() -> None:
    """--mode=attention / model: one table row per (context, batch, variant)."""
    config, dtype = _config(), jnp.dtype(_DTYPE.value)
    dense_layers = tuple(cli.int_list(_DENSE_LAYERS))
    variants = [Variant.parse(spec, dense_layers) for spec in _ATTENTION.value]
    model_mode = _MODE.value == "model"
    if model_mode and any(v.config is None for v in variants):
        raise ValueError("--mode=model: jax-peer is an attention kernel only")
    model = (kj.Qwen3ForCausalLM(config, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0)) if model_mode else None)
    unit = "tok/s" if model_mode else "GB/s"
    rows = []
    for context in cli.int_list(_CONTEXT):
        for batch in cli.int_list(_BATCH):
            base = None
            for variant in variants:
                why = variant.unavailable()
                if why:
                    rows.append((context, batch, variant.name, why))
                    continue
                step = (_model_step(variant, model, batch, context, dtype) if model_mode
                        else _attention_step(variant, batch, context, config, dtype))
                seconds = _median_seconds(step, _REPEATS.value) / _STEPS.value
                del step
                base = base or seconds
                rate = (batch / seconds if model_mode else
                        _bytes_needed(variant, batch, context, config, dtype) / seconds / 1e9)
                # Tiny CPU shapes read under 0.1 GB/s, which one decimal could print as 0.0.
                rate_text = f"{rate:10.1f}" if rate >= 1 else f"{rate:10.4f}"
                rows.append((context, batch, variant.name, f"{seconds * 1e3:10.3f} | {rate_text} | "
                                                            f"{base / seconds:6.2f}x"))
                logging.info("%s", rows[-1])
    what = (f"whole-model decode step, {config.num_hidden_layers} layers" if model_mode else
            "decode attention of one layer")
    print(f"\n{what}, {_SHAPE.value} shapes (Hq {config.num_attention_heads}, Hkv {config.num_key_value_heads}, "
          f"D {config.head_dim}), {_DTYPE.value}, device: {_device()}")
    width = max([22] + [len(row[2]) for row in rows])
    print(f"{'context':>7} | {'batch':>5} | {'variant':<{width}} | {'ms/step':>10} | {unit:>10} | vs first")
    for context, batch, name, cells in rows:
        print(f"{context:>7} | {batch:>5} | {name:<{width}} | {cells}")


# Capacity mode: a random model over a 256-token vocabulary with 8 EOS ids, so that a sample ends about one step
# in 32 (geometric lengths: mean ~31; the longest of 256 samples ~130).
CAPACITY = kj.Qwen3Config(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=32, tie_word_embeddings=True)


def _capacity() -> None:
    """--mode=capacity: the same samples under growing max_new_tokens. A step costs what it reads, so the time
    must not follow the reserved capacity (cache, page-table width, token buffer), only the tokens decoded."""
    config = dataclasses.replace(CAPACITY, num_hidden_layers=_LAYERS.value or CAPACITY.num_hidden_layers)
    dtype = jnp.dtype(_DTYPE.value)
    model = kj.Qwen3ForCausalLM(config, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    prompts = [rng.integers(8, config.vocab_size, rng.integers(16, 65)).tolist() for _ in range(_PROMPTS.value)]
    attention = dataclasses.replace(Variant.parse(_ATTENTION.value[0], ()).config, dense_layers=())
    sampling = kj.SamplingConfig(temperature=1.0, top_k=0, top_p=1.0)
    rows, reference = [], None
    for budget in cli.int_list(_BUDGETS):
        def run():
            return kj.generate(model, prompts, num_samples=_SAMPLES.value, max_new_tokens=budget, sampling=sampling,
                               attention=attention, eos_token_ids=tuple(range(8)), seed=1)
        result = run()
        seconds = _median_seconds(run, _REPEATS.value)
        lengths = result.lengths
        if reference is None:
            reference = result
        same = bool(np.array_equal(lengths, reference.lengths)) and all(
            result.sequences(p, n) == reference.sequences(p, n) for p, n in np.ndindex(lengths.shape))
        rows.append((budget, int(lengths.sum()), int(lengths.max()), len(result.attended_tokens), seconds, same))
    print(f"\n{_PROMPTS.value} prompts x {_SAMPLES.value} samples, {attention.describe()}, {config.num_hidden_layers} "
          f"layers, {_DTYPE.value}, device: {_device()}")
    print(f"{'max_new_tokens':>14} | {'tokens':>7} | {'longest':>7} | {'steps':>5} | {'seconds':>8} | "
          f"{'vs first':>8} | same samples")
    for budget, tokens, longest, steps, seconds, same in rows:
        print(f"{budget:>14} | {tokens:>7} | {longest:>7} | {steps:>5} | {seconds:>8.3f} | "
              f"{seconds / rows[0][4]:>7.2f}x | {same}")


def main(argv: list[str]) -> None:
    del argv
    logging.info("process %d of %d, backend %s", jax.process_index(), jax.process_count(), jax.default_backend())
    if _MODE.value == "capacity":
        _capacity()
    else:
        _sweep()


if __name__ == "__main__":
    cli.run(main)
