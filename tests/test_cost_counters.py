"""Measured counters: profiler parsing, HLO op families, XLA's per-step count, and a real run's counters priced
like the analytic model."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kinetics_jax as kj
from kinetics_jax import cost
from kinetics_jax.cost import counters


def test_profile_of_a_jitted_matmul_has_matmul_time(tmp_path):
    fn = jax.jit(lambda a, b: jnp.tanh(a @ b))
    a = jnp.ones((384, 384), jnp.float32)
    b200 = cost.HARDWARE["B200"]
    breakdown = cost.CostBreakdown(param_flops=2 * 384 ** 3, attention_flops=0, scoring_flops=0,
                                   kv_bytes=3 * 384 * 384 * 4, summary_bytes=0, param_bytes=0, hardware=b200.name,
                                   intensity=b200.intensity, peak_flops=b200.peak_flops)
    report = counters.profile(fn, a, a, logdir=str(tmp_path / "trace"), cost=breakdown)
    assert report.trace_file.startswith(str(tmp_path)) and report.trace_file.endswith(".xplane.pb")
    assert report.op_seconds["matmul"] > 0 and report.op_seconds["attention"] == 0
    assert 0 < report.device_seconds <= report.wall_seconds * 1.5
    assert report.achieved_flops_per_s == pytest.approx(2 * 384 ** 3 / report.device_seconds)
    assert report.predicted_seconds == breakdown.seconds


def test_hlo_families_see_through_fusions_and_loops():
    fn = jax.jit(lambda a: jax.lax.fori_loop(0, 3, lambda i, x: jnp.tanh(x @ x), a).sum())
    text = fn.lower(jnp.ones((64, 64))).compile().as_text()
    families = counters.hlo_families(text)
    assert "matmul" in families.values() and "other" in families.values()
    loops = re.findall(r"%([\w.\-]+) = [^=]*? while\(", text)
    assert loops and all(families[name] == "matmul" for name in loops)  # the loop body holds a dot


def test_pallas_kernels_are_the_attention_family():
    line = '%custom-call.3 = f32[8] custom-call(%p), custom_call_target="__gpu$xla.gpu.triton", name="x"'
    text = f"HloModule m\n\nENTRY %main (p: f32[8]) -> f32[8] {{\n  %p = f32[8] parameter(0)\n  ROOT {line}\n}}\n"
    assert counters.hlo_families(text)["custom-call.3"] == "attention"


@pytest.mark.parametrize("layers", [2, 4])
def test_decode_step_cost_matches_the_analytic_parameter_flops(layers):
    """XLA's count of the non-attention part of one decode step (every layer: the scan is unrolled) against the
    analytic parameter FLOPs, 2 P per token. P counts the embedding as a matmul by the paper's convention (2 V H
    FLOPs); XLA counts the lookup, a gather, as 0, so that term is taken out. The rest is what XLA adds: norms,
    RoPE, activations (a few percent at this size)."""
    config = kj.Qwen3Config(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=layers,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=32)
    batch = 4
    xla = counters.decode_step_cost(config, batch=batch, dtype=jnp.float32)
    analytic = batch * 2 * (cost.paper_params(config) - config.vocab_size * config.hidden_size)
    assert 1.0 <= xla.flops / analytic <= 1.1, (xla.flops, analytic)
    assert xla.bytes_accessed >= cost.paper_params(config) * 4 * 0.9  # the weights are read once per step


@pytest.mark.parametrize("attention", [
    kj.AttentionConfig(),
    kj.AttentionConfig(kj.policies.BlockTopK(block_topk=1, sink=4, local=3), dense_layers=(1,)),
    kj.AttentionConfig(kj.policies.SlidingWindow(local=9), dense_layers=()),
], ids=kj.AttentionConfig.describe)
def test_counters_of_a_real_run_price_like_the_analytic_model(attention, hf_checkpoints):
    """Greedy, no EOS: every sample generates exactly L tokens, so the run's measured attended-token counters
    must give the analytic cost of the same lengths, to the FLOP and byte."""
    model = kj.load_hf_checkpoint(hf_checkpoints["dense_g4_sharded"], dtype=jnp.float32)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 160, n).tolist() for n in (13, 40)]
    result = kj.generate(model, prompts, num_samples=3, max_new_tokens=50,
                         sampling=kj.SamplingConfig.greedy_config(), attention=attention)
    assert (result.lengths == 50).all()
    measured = cost.from_counters(result, model.config, dtype="float32")
    expected = [cost.tts_cost(model.config, prompt_len=len(p), gen_lens=50, num_samples=3, attention=attention,
                              dtype="float32") for p in prompts]
    for field in ("param_flops", "attention_flops", "scoring_flops", "kv_bytes", "summary_bytes"):
        assert getattr(measured, field) == sum(getattr(e, field) for e in expected), field
    assert measured.eflops == pytest.approx(sum(e.eflops for e in expected), rel=1e-12)
