"""Analytic cost of test-time scaling: FLOPs, HBM bytes and eFLOPs (Kinetics, arXiv 2506.05333; docs/cost_model.md).

Symbols: P parameters in the paper's convention (`paper_params`: active parameters, with a tied embedding
counted twice, once as the input embedding and once as the output projection), L layers, Hq / Hkv query / KV
heads, d head_dim, r = Hq / Hkv, Li prompt tokens, Lo generated tokens per sample, N samples per prompt,
I = peak FLOP/s / HBM bytes/s of the hardware (FLOP per byte).

Steps. A sample that generates Lo tokens does Lo generation steps j = 1 .. Lo; step j attends a context of
n_j = Li + j - 1 tokens. Step j = 1 is the last prompt position of the prefill: dense in every layer. Steps
j >= 2 are the engine's decode steps (decode step s = j - 2): the attention policy applies to the sparse layers,
those not in `attention.dense_layers` (with the dense policy every layer is dense). The rest of the prefill, prompt
positions 0 .. Li - 2, is not priced: like the paper, this prices decoding only.

KV tokens one layer attends at a step with context n (`attended_tokens`):
    dense layer        n
    topk               min(n, sink + topk + local)                (oracle: its selection is not priced)
    block_topk         n - max(n_full - block_topk, 0) * block_size,  n_full = max(n - local - sink, 0) // block_size
    sliding_window     min(n, sink + local)

Per sample and step (integers, exact):
    parameter FLOPs    2 P
    attention FLOPs    4 Hq d * attended, summed over layers                   (QK^T and PV)
    scoring FLOPs      c Hkv d * n_full per block_topk sparse layer and decode step once the policy is active
                       (n_full > block_topk; below it every block is kept unscored); c = 2 for "mean" (group-mean
                       query . block mean key), c = 4 for "quest" (qbar . (min + max) / 2 + mean|q| . (max - min) / 2)
Per step, for the N samples of a prompt (bytes; kv_tok = 2 Hkv d itemsize per token and layer):
    dense-layer KV     (Li + N (j - 1)) kv_tok: the prompt is read once for all N samples (a shared prefix) and
                       each sample reads its own j - 1 generated tokens
    sparse-layer KV    N * attended * kv_tok once the policy is active: selections differ per sample, nothing
                       is shared. Below its threshold a sparse layer is dense and priced like one (the engine
                       reads it through the shared-prefix cascade)
    block summaries    (Sp + N (n_full - Sp)) * Hkv d * itemsize ("mean": one mean key per block) or * 2 itemsize
                       ("quest": min and max), once the policy is active, in the cache dtype: the Sp =
                       min(n_full, prompt blocks) candidates that are the prompt's shared full pages are read
                       once per step for the N samples (their scores differ, the summaries do not), the sample's
                       own blocks per sample; prompt blocks = (Li + page_offset) // block_size - sink pages
    parameters         P * itemsize (weights are read once per step for the N-sample batch; P as above, so the
                       embedding table is priced as if read in full); off by default, as in the paper

    eFLOPs = compute FLOPs + I * memory bytes;  seconds = eFLOPs / peak FLOP/s = FLOPs / peak + bytes / bandwidth

Sums over steps are exact: every per-step count is summed in int64 (numpy prefix sums over steps), the products
with the per-token constants are Python integers, and only eFLOPs and seconds (and a mean over samples) are
floats. There are no continuous approximations of the sums (the original's +-0.5 (B - Li)^2 terms).

The paper's dense closed form (`paper_dense_eflops`), with D = 2 L Hkv d (K and V elements per token):
    2NPLo + 2rN Li D Lo + rN D Lo^2 + 2I Li D Lo + I N D Lo^2.
Derivation from the sums above with every layer dense, param reads off, bf16 (itemsize 2, so L kv_tok = 2D bytes):
    attention FLOPs  = N sum_j 4 Hq d L (Li + j - 1) = 2rD N (Li Lo + Lo (Lo - 1) / 2)       (4 Hq d L = 2 r D)
                     = 2rN Li D Lo + rN D Lo^2 - rN D Lo
    KV bytes         = sum_j 2D (Li + N (j - 1)) = 2 Li D Lo + N D Lo^2 - N D Lo
so the exact dense eFLOPs are the paper's minus (r + I) N D Lo: the paper's D is in elements and its memory terms
are bytes because bf16 has 2 bytes per element, and its Lo^2 terms are the continuous sum of j - 1. The relative
difference is (r + I) N D Lo / paper < 1 / Lo.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from typing import TYPE_CHECKING, Sequence

import numpy as np
from numpy.typing import DTypeLike

from kinetics_jax.config import Qwen3Config
from kinetics_jax.policies import AttentionConfig

if TYPE_CHECKING:
    from kinetics_jax.sampling.engine import GenerationResult


# ------------------------------------------------------------------------------------------------ hardware
@dataclasses.dataclass(frozen=True)
class Hardware:
    """An accelerator: peak dense FLOP/s and HBM bytes/s; intensity = peak / bandwidth (FLOP per byte).

    Sources of the `HARDWARE` entries (per chip, no structured sparsity):
    - B200: the Kinetics paper and its code, 4.5 PFLOP/s over 8 TB/s, I = 562.5 (4.5 PFLOP/s is NVIDIA's dense
      FP8 figure for B200; it is kept as the paper uses it, so our eFLOPs compare with the paper's).
    - H100-SXM, H200 (SXM), A100-SXM (80 GB): NVIDIA's datasheets, BF16 tensor-core FLOP/s without sparsity
      (the headline 1,979 / 624 TFLOPS are with 2:4 sparsity) and HBM bandwidth.
    - TPU v5e / v5p / v6e: Google Cloud TPU docs, "System architecture" pages (cloud.google.com/tpu/docs/v5e,
      /v5p, /v6e): bf16 peak compute per chip and HBM bandwidth per chip.
    """

    name: str
    peak_flops: float
    hbm_bytes_per_s: float

    def __post_init__(self) -> None:
        if not (self.peak_flops > 0 and self.hbm_bytes_per_s > 0):
            raise ValueError(f"Hardware {self.name!r}: peak_flops and hbm_bytes_per_s must be > 0, got "
                             f"{self.peak_flops!r} and {self.hbm_bytes_per_s!r}")

    @property
    def intensity(self) -> float:
        return self.peak_flops / self.hbm_bytes_per_s


HARDWARE: dict[str, Hardware] = {h.name: h for h in (
    Hardware("B200", 4500e12, 8e12),
    Hardware("H100-SXM", 989e12, 3.35e12),
    Hardware("H200", 989e12, 4.8e12),
    Hardware("A100-SXM", 312e12, 2.039e12),
    Hardware("TPU-v5e", 197e12, 819e9),
    Hardware("TPU-v5p", 459e12, 2765e9),
    Hardware("TPU-v6e", 918e12, 1640e9),
)}


def resolve_hardware(spec: str | Hardware) -> Hardware:
    """A `Hardware` as given, or the `HARDWARE` entry of that name (case-insensitive)."""
    if isinstance(spec, Hardware):
        return spec
    by_name = {name.lower(): hw for name, hw in HARDWARE.items()}
    if isinstance(spec, str) and spec.lower() in by_name:
        return by_name[spec.lower()]
    raise ValueError(f"unknown hardware {spec!r}; known: {', '.join(HARDWARE)} (or pass a Hardware)")


# ------------------------------------------------------------------------------------------------ results
@dataclasses.dataclass(frozen=True)
class CostBreakdown:
    """Cost terms (FLOPs and bytes, floats) and their totals on one hardware.

    tts_cost: for the N samples of one prompt (a mean over the given lengths); from_counters: for a whole run.
    compute_flops = param + attention + scoring FLOPs; memory_bytes = kv + summary + param bytes;
    eflops = compute_flops + intensity * memory_bytes; seconds = eflops / peak_flops.
    """

    param_flops: float
    attention_flops: float
    scoring_flops: float
    kv_bytes: float
    summary_bytes: float
    param_bytes: float
    hardware: str
    intensity: float
    peak_flops: float
    compute_flops: float = dataclasses.field(init=False)
    memory_bytes: float = dataclasses.field(init=False)
    eflops: float = dataclasses.field(init=False)
    seconds: float = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        compute = self.param_flops + self.attention_flops + self.scoring_flops
        memory = self.kv_bytes + self.summary_bytes + self.param_bytes
        eflops = compute + self.intensity * memory
        for name, value in (("compute_flops", compute), ("memory_bytes", memory), ("eflops", eflops),
                            ("seconds", eflops / self.peak_flops)):
            object.__setattr__(self, name, value)

    @property
    def attention_eflops(self) -> float:
        """eFLOPs of attention alone: its FLOPs (scoring included) + I * its bytes (KV and block summaries)."""
        return self.attention_flops + self.scoring_flops + self.intensity * (self.kv_bytes + self.summary_bytes)

    @property
    def phi(self) -> float:
        """Phi = attention cost / parameter cost = attention_eflops / param_flops (parameter reads excluded)."""
        return self.attention_eflops / self.param_flops

    def __add__(self, other: "CostBreakdown") -> "CostBreakdown":
        if (self.hardware, self.intensity, self.peak_flops) != (other.hardware, other.intensity, other.peak_flops):
            raise ValueError(f"cannot add costs on different hardware ({self.hardware} and {other.hardware})")
        terms = {f: getattr(self, f) + getattr(other, f) for f in _TERMS}
        return CostBreakdown(**terms, hardware=self.hardware, intensity=self.intensity, peak_flops=self.peak_flops)


_TERMS = ("param_flops", "attention_flops", "scoring_flops", "kv_bytes", "summary_bytes", "param_bytes")


# ------------------------------------------------------------------------------------------------ per-token constants
def paper_params(config: Qwen3Config) -> int:
    """P in the paper's convention: active parameters, the embedding and the output projection both counted even
    when tied (Qwen3-8B: 8.19e9; Qwen3-0.6B: 0.752e9)."""
    tied = config.vocab_size * config.hidden_size if config.tie_word_embeddings else 0
    return config.num_active_params() + tied


def _dense_layer_count(config: Qwen3Config, attention: AttentionConfig) -> int:
    """Layers that stay dense at decode steps."""
    return int(attention.dense_layer_mask(config.num_hidden_layers).sum())


def attended_tokens(n: np.ndarray, attention: AttentionConfig) -> np.ndarray:
    """KV tokens one sparse layer attends at a decode step with context n (int64 array), per the policy."""
    return attention.policy.attended(np.asarray(n, np.int64))


def full_blocks(n: np.ndarray, attention: AttentionConfig) -> np.ndarray:
    """Candidate blocks a sparse layer scores at context n once its policy is active (0 for policies that score
    no blocks)."""
    return attention.policy.candidate_blocks(np.asarray(n, np.int64))


def _prompt_blocks(prompt_len: int, attention: AttentionConfig) -> int:
    """Candidate blocks that are the prompt's own full pages: scored from one read for all its samples."""
    return attention.policy.prompt_blocks(prompt_len, attention.cache_page_size)


@dataclasses.dataclass(frozen=True)
class _Counts:
    """Integer counts of a job. Each cost term is one of them times a per-token constant (`_breakdown`)."""

    generated: int    # generated tokens (2P FLOPs each)
    attended: int     # KV tokens attended, summed over layers, steps and samples (4 Hq d FLOPs each)
    dense_read: int   # KV tokens read like a dense layer: the prompt once per step for its running samples
    sparse_read: int  # KV tokens read by sparse layers past their activation threshold, per sample
    inactive: int     # KV tokens of sparse layers below their threshold (dense then: counted in dense_read)
    blocks: int       # block summaries scored, summed over sparse layers, decode steps and samples
    summaries: int    # block summaries read: the prompt's shared ones once per step, the rest per sample
    steps: int        # batched steps of the samples of each prompt (weight reads)

    def __add__(self, other: "_Counts") -> "_Counts":
        return _Counts(*(getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(self)))


class _StepSums:
    """Prefix sums over the generation steps j = 1 .. max_len of one sample of a prompt of `prompt_len` tokens;
    entry [L] is the sum over steps 1 .. L (entry [0] is 0)."""

    def __init__(self, config: Qwen3Config, attention: AttentionConfig, prompt_len: int, max_len: int):
        j = np.arange(1, max_len + 1, dtype=np.int64)
        n = prompt_len + j - 1
        layers = config.num_hidden_layers
        dense = np.where(j == 1, layers, _dense_layer_count(config, attention))  # dense layers at step j
        sparse = layers - dense
        attended = attended_tokens(n, attention)
        below = ~attention.policy.active(n)  # not active yet: the step is dense, prompt shared (cascade)
        sparse_tokens = sparse * attended
        shared = dense + sparse * below  # layers that read the prompt once for all samples

        def prefix(x: np.ndarray) -> np.ndarray:
            return np.concatenate([[0], np.cumsum(x, dtype=np.int64)])

        self.prompt_len = prompt_len
        self.attended = prefix(dense * n + sparse_tokens)
        self.sparse_read = prefix(np.where(below, 0, sparse_tokens))
        self.inactive = prefix(np.where(below, sparse_tokens, 0))
        self.dense_steps = prefix(shared)      # times the prompt is read (per layer), one per step
        self.own_read = prefix(shared * (j - 1))  # a sample's own generated tokens read by those layers
        scored = np.where(below, 0, sparse * full_blocks(n, attention))  # per sample, once the policy is active
        shared_blocks = np.minimum(scored, sparse * _prompt_blocks(prompt_len, attention))
        self.blocks = prefix(scored)
        self.shared_blocks = prefix(shared_blocks)  # read once per step for the samples of the prompt

    def counts(self, lengths: np.ndarray) -> _Counts:
        """Counts of the samples of this prompt that generate `lengths` (int64[N], each >= 1) tokens: the prompt
        is read once per step while any of them runs."""
        def total(table: np.ndarray) -> int:
            return int(np.sum(table[lengths], dtype=np.int64))

        steps = int(lengths.max())
        return _Counts(generated=int(lengths.sum()), attended=total(self.attended),
                       dense_read=self.prompt_len * int(self.dense_steps[steps]) + total(self.own_read),
                       sparse_read=total(self.sparse_read), inactive=total(self.inactive), blocks=total(self.blocks),
                       summaries=int(self.shared_blocks[steps]) + total(self.blocks) - total(self.shared_blocks),
                       steps=steps)


def _breakdown(counts: _Counts, config: Qwen3Config, attention: AttentionConfig, hw: Hardware, dtype: DTypeLike,
           param_bytes: bool, divisor: int = 1) -> CostBreakdown:
    """Costs of `counts` divided by `divisor` (a mean over that many jobs; Python int / int rounds once)."""
    itemsize = np.dtype(dtype).itemsize
    params = paper_params(config)
    hkv_d = config.num_key_value_heads * config.head_dim
    policy = attention.policy
    terms = dict(
        param_flops=2 * params * counts.generated,
        attention_flops=4 * config.num_attention_heads * config.head_dim * counts.attended,
        scoring_flops=policy.scoring_flops * hkv_d * counts.blocks,
        kv_bytes=2 * hkv_d * itemsize * (counts.dense_read + counts.sparse_read),
        summary_bytes=len(policy.summaries) * hkv_d * itemsize * counts.summaries,
        param_bytes=params * itemsize * counts.steps if param_bytes else 0,
    )
    return CostBreakdown(**{k: v / divisor for k, v in terms.items()}, hardware=hw.name, intensity=hw.intensity,
                         peak_flops=hw.peak_flops)


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


# ------------------------------------------------------------------------------------------------ public API
def tts_cost(config: Qwen3Config, *, prompt_len: int, gen_lens: int | Sequence[int], num_samples: int,
             attention: AttentionConfig = AttentionConfig(), hardware: str | Hardware = "B200",
             dtype: DTypeLike = "bfloat16", param_bytes: bool = False) -> CostBreakdown:
    """Cost of N = num_samples samples of one prompt of prompt_len tokens (decoding only, see the module doc).

    gen_lens: an int (every sample generates that many tokens), or exactly num_samples lengths: then the result
    is the mean over i of the cost of N samples that all generate gen_lens[i] tokens (the paper's Best-of-N
    accounting). dtype: the KV cache and weight dtype (bytes per element). param_bytes: also price the weight
    reads, once per step for the N-sample batch.
    """
    prompt_len = _positive_int("prompt_len", prompt_len)
    num_samples = _positive_int("num_samples", num_samples)
    if isinstance(gen_lens, (int, np.integer)) and not isinstance(gen_lens, bool):
        lengths = [_positive_int("gen_lens", gen_lens)]
    else:
        lengths = [_positive_int(f"gen_lens[{i}]", x) for i, x in enumerate(gen_lens)]
        if len(lengths) != num_samples:
            raise ValueError(f"gen_lens has {len(lengths)} lengths but num_samples is {num_samples}")
    attention.check_layers(config.num_hidden_layers)
    hw = resolve_hardware(hardware)
    sums = _StepSums(config, attention, prompt_len, max(lengths))
    total = functools.reduce(operator.add, (sums.counts(np.full(num_samples, length, np.int64))
                                            for length in lengths))
    return _breakdown(total, config, attention, hw, dtype, param_bytes, divisor=len(lengths))


def phi(config: Qwen3Config, *, prompt_len: int, gen_len: int | Sequence[int], num_samples: int = 1,
        attention: AttentionConfig = AttentionConfig(), hardware: str | Hardware = "B200") -> float:
    """Phi = attention cost / parameter cost of `tts_cost` (bf16, parameter reads off):
    (attention_flops + scoring_flops + I (kv_bytes + summary_bytes)) / param_flops.

    For dense attention this is exactly [2r Li D + r D (Lo - 1) + I D (2 Li / N + Lo - 1)] / 2P (D = 2 L Hkv d).
    The paper's approximation [2r Li D + (rD + ID) Lo] / 2P drops the -1s and the prompt read 2 I Li D / N, which
    prefix sharing divides by N but which matters for N = 1: for Qwen3-8B, Li = 1024, Lo = 4096, N = 1 the exact
    Phi is 15.7 where the approximation gives 10.5.
    """
    return tts_cost(config, prompt_len=prompt_len, gen_lens=gen_len, num_samples=num_samples, attention=attention,
                    hardware=hardware).phi


def paper_dense_eflops(config: Qwen3Config, *, prompt_len: int, gen_len: int, num_samples: int,
                       hardware: str | Hardware = "B200") -> float:
    """The paper's dense closed form 2NPLo + 2rN Li D Lo + rN D Lo^2 + 2I Li D Lo + I N D Lo^2 (D = 2 L Hkv d, K and
    V elements per token; its memory terms are bf16 bytes). A cross-check: it exceeds the exact dense
    `tts_cost(...).eflops` (bf16, param reads off) by exactly (r + I) N D Lo (see the module doc)."""
    li = _positive_int("prompt_len", prompt_len)
    lo = _positive_int("gen_len", gen_len)
    n = _positive_int("num_samples", num_samples)
    r = config.group_size
    d = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim
    compute = 2 * n * paper_params(config) * lo + 2 * r * n * li * d * lo + r * n * d * lo ** 2
    memory = 2 * li * d * lo + n * d * lo ** 2
    return compute + resolve_hardware(hardware).intensity * memory


def from_counters(result: GenerationResult, config: Qwen3Config, *, hardware: str | Hardware = "B200",
                  dtype: DTypeLike = "bfloat16", param_bytes: bool = False) -> CostBreakdown:
    """Cost of a real `generate` run: the TOTAL over all its prompts and samples (not a mean).

    The policy is the run's own (`result.attention`: it says which layers are dense). Attention FLOPs and
    sparse-layer KV bytes come from the measured `result.attended_tokens` (plus the dense first step, Li per
    layer and sample); parameter FLOPs, dense-layer KV bytes (the prompt read once per step while any sample of
    the prompt runs), block scoring and summaries, and weight reads (once per step per prompt's batch, as in
    `tts_cost`) come from `result.lengths` and `result.prompt_lengths`. With equal lengths L this equals the sum
    over prompts of tts_cost(prompt_len=Li, gen_lens=L, num_samples=N).
    """
    attention = result.attention
    attention.check_layers(config.num_hidden_layers)
    hw = resolve_hardware(hardware)
    lengths = np.asarray(result.lengths, np.int64)
    prompt_lengths = np.asarray(result.prompt_lengths, np.int64)
    measured = np.asarray(result.attended_tokens, np.int64)
    _check_result(lengths, prompt_lengths, measured, config)

    counts = functools.reduce(operator.add, (
        _StepSums(config, attention, prompt_len, int(sample_lengths.max())).counts(sample_lengths)
        for prompt_len, sample_lengths in zip(prompt_lengths.tolist(), lengths)))

    dense = attention.dense_layer_mask(config.num_hidden_layers)
    first_step = config.num_hidden_layers * lengths.shape[1] * int(prompt_lengths.sum())  # j = 1, every layer
    # Sparse layers below their threshold read like dense layers (already in dense_read, from the lengths).
    counts = dataclasses.replace(counts, attended=first_step + int(measured.sum()),
                                 sparse_read=int(measured[:, ~dense].sum()) - counts.inactive)
    return _breakdown(counts, config, attention, hw, dtype, param_bytes)


# ------------------------------------------------------------------------------------------------ helpers
def _check_result(lengths: np.ndarray, prompt_lengths: np.ndarray, measured: np.ndarray,
                  config: Qwen3Config) -> None:
    if lengths.ndim != 2 or lengths.size == 0:
        raise ValueError(f"result.lengths must be int[prompts, samples], got shape {lengths.shape}")
    if prompt_lengths.shape != lengths.shape[:1]:
        raise ValueError(f"result.prompt_lengths has shape {prompt_lengths.shape}; expected ({lengths.shape[0]},)")
    if lengths.min() < 1 or prompt_lengths.min() < 1:
        raise ValueError("result.lengths and result.prompt_lengths must be >= 1")
    steps = int(lengths.max()) - 1
    if measured.shape != (steps, config.num_hidden_layers):
        raise ValueError(f"result.attended_tokens has shape {measured.shape}; expected ({steps}, "
                         f"{config.num_hidden_layers}): one row per decode step (max length - 1), one column per "
                         f"layer of the model")


# ------------------------------------------------------------------------------------------------ one step
@dataclasses.dataclass(frozen=True)
class StepReads:
    """What one decode step of P prompts x N samples reads and writes, summed over layers and rows, at a context
    of n cached tokens (the current one included), with the engine's sharing: one KV token is one layer's K and V
    of every KV head; one summary is one layer's summary of one block over every KV head.

    kv_tokens: KV tokens read (dense layers and sparse layers below their threshold read the prompt once per
    prompt, the rest per sample); summaries: block summaries read (the prompt's shared ones once per prompt);
    kv_written: KV tokens appended (one per row and layer); attended: KV tokens attended, per row (FLOPs);
    scored: block summaries scored, per row (FLOPs)."""

    kv_tokens: int
    summaries: int
    kv_written: int
    attended: int
    scored: int

    def bytes(self, config: Qwen3Config, attention: AttentionConfig, dtype: DTypeLike) -> dict[str, int]:
        """{"kv": bytes of KV read, "summaries": of summaries read, "kv_written": of KV appended} in `dtype`."""
        per_token = 2 * config.num_key_value_heads * config.head_dim * np.dtype(dtype).itemsize
        per_summary = len(attention.summaries) * config.num_key_value_heads * config.head_dim * \
            np.dtype(dtype).itemsize
        return {"kv": self.kv_tokens * per_token, "summaries": self.summaries * per_summary,
                "kv_written": self.kv_written * per_token}

    def flops(self, config: Qwen3Config, attention: AttentionConfig) -> int:
        """Attention FLOPs (QK^T and PV over the attended tokens) plus block scoring."""
        hkv_d = config.num_key_value_heads * config.head_dim
        return (4 * config.num_attention_heads * config.head_dim * self.attended
                + attention.policy.scoring_flops * hkv_d * self.scored)


def decode_step_reads(config: Qwen3Config, attention: AttentionConfig, *, context: int, prompt_len: int,
                      num_prompts: int, num_samples: int) -> StepReads:
    """`StepReads` of one decode step at `context` cached tokens per row, prompt_len of them the prompt's (the
    same sums as `tts_cost` at one step j = context - prompt_len + 1 >= 2, for the whole batch)."""
    context = _positive_int("context", context)
    prompt_len = min(_positive_int("prompt_len", prompt_len), context)
    rows = _positive_int("num_prompts", num_prompts) * _positive_int("num_samples", num_samples)
    attention.check_layers(config.num_hidden_layers)
    layers = config.num_hidden_layers
    dense = _dense_layer_count(config, attention)
    sparse = layers - dense
    attended = int(attended_tokens(np.int64(context), attention))
    below = not attention.policy.active(np.int64(context))
    shared_layers = dense + (sparse if below else 0)
    kv = shared_layers * (num_prompts * prompt_len + rows * (context - prompt_len))
    kv += 0 if below else sparse * rows * attended
    scored = 0 if below else int(full_blocks(np.int64(context), attention))
    shared = min(scored, _prompt_blocks(prompt_len, attention))
    summaries = sparse * (num_prompts * shared + rows * (scored - shared))
    return StepReads(kv_tokens=kv, summaries=summaries, kv_written=layers * rows,
                     attended=rows * (dense * context + sparse * attended), scored=rows * sparse * scored)
