"""Prices a test-time-scaling configuration with the Kinetics eFLOPs model: dense against sparse budgets.

    python scripts/cost_report.py --config=qwen3-8b --prompt_len=1024 --gen_len=16384 --num_samples=8 \
        --budgets=256,512,1024,2048 --hardware=B200
    # price measured runs (scripts/generate.py output); the attention of each record is the run's own
    python scripts/cost_report.py --config=ckpt/qwen3-0.6b --results=runs/samples.jsonl
    # XLA's count of one compiled decode step (x steps) beside the analytic numbers
    python scripts/cost_report.py --config=qwen3-0.6b --prompt_len=1024 --gen_len=4096 --num_samples=8 --xla
    # add measured time: run the configuration on a checkpoint under jax.profiler (default: the embedded one)
    python scripts/cost_report.py --profile --prompt_len=64 --gen_len=64 --num_samples=4 --budgets=16,32

--config is a preset name, a config.json, or a checkpoint directory. Rows: dense, then block top-k at each
--budgets entry (tokens selected per step = block_size x blocks, with the other fields of --attention when it is
a block_topk label, e.g. --attention=block_topk-64:score=quest,sink=8), then the --attention policy if it is
neither. Costs are per prompt (N samples), over
the decode of --gen_len tokens per sample (the prefill is not priced, as in the paper). "vs dense" is the
eFLOPs ratio. --profile runs each row's policy for real (greedy, no EOS, random prompt tokens) on --checkpoint
and adds the measured op time from a jax.profiler trace (TensorBoard-readable, under --profile_dir), with the
achieved FLOP/s and bytes/s of the analytic counts for that checkpoint's model.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os

from absl import flags, logging

import jax
import jax.numpy as jnp
import numpy as np

import kinetics_jax as kj
from kinetics_jax import cli, cost
from kinetics_jax.policies import BlockTopK
from kinetics_jax.policies import flags as attention_flags

EMBEDDED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kinetics_jax", "assets",
                        "tiny-random-qwen3")

_CONFIG = flags.DEFINE_string("config", "qwen3-8b", "Preset name, config.json, or checkpoint directory.")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 1024, "Prompt tokens (Li).", lower_bound=1)
_GEN_LEN = flags.DEFINE_integer("gen_len", 8192, "Generated tokens per sample (Lo).", lower_bound=1)
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "Samples per prompt (N).", lower_bound=1)
_BUDGETS = cli.define_int_list("budgets", [256, 512, 1024, 2048],
                               "Block top-k budgets (selected tokens per step, whole blocks).")
_HARDWARE = flags.DEFINE_enum("hardware", "B200", sorted(cost.HARDWARE), "Hardware to price on.")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "KV cache dtype.")
_RESULTS = flags.DEFINE_string("results", None, "jsonl of scripts/generate.py to price instead.")
_PROFILE = flags.DEFINE_bool("profile", False, "Also run each row on --checkpoint and measure it.")
_XLA = flags.DEFINE_bool("xla", False, "Also print XLA's cost analysis of one compiled decode step x steps, "
                         "beside the analytic dense numbers.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", EMBEDDED, "Checkpoint for --profile (orbax or HF directory).")
_PROFILE_DIR = flags.DEFINE_string("profile_dir", "runs/profile", "Where --profile writes its traces.")
attention_flags.define_flags()


def _config(spec: str) -> kj.Qwen3Config:
    if spec in kj.Qwen3Config.preset_names():
        return kj.Qwen3Config.preset(spec)
    if os.path.exists(spec):
        return kj.Qwen3Config.from_hf_config(spec)
    raise ValueError(f"--config {spec!r} is neither a preset ({', '.join(kj.Qwen3Config.preset_names())}) nor "
                     f"a config.json / checkpoint directory")


def _policies(base: kj.AttentionConfig) -> list[kj.AttentionConfig]:
    """Dense, block top-k at each budget, and the flags' policy if it is another one."""
    rows = [kj.AttentionConfig(backend=base.backend)]
    template = base.policy if isinstance(base.policy, BlockTopK) else BlockTopK(block_topk=1)
    fields = {f.name: getattr(template, f.name) for f in dataclasses.fields(template) if f.name != "block_topk"}
    for budget in cli.int_list(_BUDGETS):
        try:
            policy = BlockTopK.from_tokens(budget, dict(fields))
        except ValueError as e:
            raise ValueError(f"--budgets {budget}: {e}") from None
        rows.append(kj.AttentionConfig(policy, dense_layers=base.dense_layers, backend=base.backend,
                                       tile_tokens=base.tile_tokens))
    if base not in rows:
        rows.append(base)
    return rows


def _measure(model: kj.Qwen3ForCausalLM, policy: kj.AttentionConfig, breakdown: cost.CostBreakdown
             ) -> cost.ProfileReport:
    """Runs the request (random prompt, greedy, no EOS) under the profiler."""
    prompt = np.random.default_rng(0).integers(0, model.config.vocab_size, _PROMPT_LEN.value).tolist()

    def run():
        return kj.generate(model, [prompt], num_samples=_NUM_SAMPLES.value, max_new_tokens=_GEN_LEN.value,
                           sampling=kj.SamplingConfig.greedy_config(), attention=policy).tokens

    logdir = os.path.join(_PROFILE_DIR.value, policy.describe().replace(" ", ""))
    return cost.profile(run, logdir=logdir, cost=breakdown)


def _table(config: kj.Qwen3Config, name: str) -> None:
    base = attention_flags.config_from_flags()
    profiled = None
    if _PROFILE.value:
        path = _CHECKPOINT.value
        model = kj.load_model(path, dtype=jnp.dtype(_DTYPE.value))
        config, name, profiled = model.config, path, model
    header = (f"{'policy':<48} | {'compute FLOPs':>13} | {'memory bytes':>13} | {'eFLOPs':>10} | {'Phi':>7} | "
              f"{_HARDWARE.value + ' s':>10} | vs dense")
    if profiled is not None:
        header += f" | {'measured s':>10} | {'FLOP/s':>9} | {'B/s':>9}"
    lines = [header]
    dense_eflops = None
    for policy in _policies(base):
        kw = dict(prompt_len=_PROMPT_LEN.value, num_samples=_NUM_SAMPLES.value, attention=policy,
                  hardware=_HARDWARE.value)
        breakdown = cost.tts_cost(config, gen_lens=_GEN_LEN.value, dtype=_DTYPE.value, **kw)
        phi = cost.phi(config, gen_len=_GEN_LEN.value, **kw)
        dense_eflops = dense_eflops or breakdown.eflops
        row = (f"{policy.describe():<48} | {breakdown.compute_flops:>13.4g} | {breakdown.memory_bytes:>13.4g} | "
               f"{breakdown.eflops:>10.4g} | {phi:>7.2f} | {breakdown.seconds:>10.4g} | "
               f"{breakdown.eflops / dense_eflops:>7.3f}")
        if profiled is not None:
            report = _measure(profiled, policy, breakdown)
            row += (f" | {report.device_seconds:>10.4g} | {report.achieved_flops_per_s:>9.3g} | "
                    f"{report.achieved_bytes_per_s:>9.3g}")
            logging.info("%s: op seconds %s, trace %s", policy.describe(), report.op_seconds, report.trace_file)
        lines.append(row)
    print(f"\n{name}: prompt {_PROMPT_LEN.value} tokens, {_NUM_SAMPLES.value} sample(s) x {_GEN_LEN.value} "
          f"generated tokens, KV {_DTYPE.value}, priced on {_HARDWARE.value} "
          f"(I = {cost.HARDWARE[_HARDWARE.value].intensity:.1f} FLOP/byte)")
    print("\n".join(lines))
    if _XLA.value:
        _xla_beside_analytic(config)


def _xla_beside_analytic(config: kj.Qwen3Config) -> None:
    """XLA's count of the non-attention part of one decode step of the N samples, times the steps, beside the
    analytic parameter FLOPs (without the embedding lookup: 2 V H per token by the paper's convention, a gather
    for XLA) and parameter bytes (the weights read once per step)."""
    steps, n = _GEN_LEN.value, _NUM_SAMPLES.value
    # XLA:CPU upcasts bf16 matmuls to float32 and counts the converts as FLOPs: count float32 there.
    dtype = "float32" if jax.default_backend() == "cpu" else _DTYPE.value
    step = cost.decode_step_cost(config, batch=n, dtype=jnp.dtype(dtype))
    analytic = cost.tts_cost(config, prompt_len=_PROMPT_LEN.value, gen_lens=steps, num_samples=n, dtype=dtype,
                             param_bytes=True)
    flops = analytic.param_flops - 2 * config.vocab_size * config.hidden_size * n * steps
    print(f"\nnon-attention part of {steps} decode steps x {n} samples ({dtype}): XLA cost analysis of one "
          f"compiled step x {steps}, against the analytic parameter terms (attention is priced above)")
    print(f"{'':<6} | {'XLA x steps':>12} | {'analytic':>12} | ratio")
    print(f"{'FLOPs':<6} | {step.flops * steps:>12.4g} | {flops:>12.4g} | {step.flops * steps / flops:.3f}")
    print(f"{'bytes':<6} | {step.bytes_accessed * steps:>12.4g} | {analytic.param_bytes:>12.4g} | "
          f"{step.bytes_accessed * steps / analytic.param_bytes:.3f}")


def _price_results(config: kj.Qwen3Config, name: str) -> None:
    """One row per prompt of a generate.py jsonl: Best-of-N cost (mean over its samples' lengths)."""
    groups: dict[int, list[dict]] = collections.defaultdict(list)
    with open(_RESULTS.value, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:  # JSON (UTF-8) holding an object with the fields priced below
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise TypeError(f"a JSON {type(record).__name__}, not an object")
                int(record["length"]), int(record["prompt_length"])
                groups[int(record["prompt_index"])].append(record)
            except (ValueError, KeyError, TypeError) as e:
                why = f"no field {e}" if isinstance(e, KeyError) else e
                raise ValueError(f"{_RESULTS.value}:{number}: not a generate.py record ({why})") from None
    if not groups:
        raise ValueError(f"{_RESULTS.value} holds no records")
    print(f"\n{name}: {len(groups)} prompts from {_RESULTS.value}, priced on {_HARDWARE.value}")
    print(f"{'prompt':>6} | {'N':>3} | {'prompt len':>10} | {'mean len':>8} | {'policy':<48} | {'eFLOPs':>10} | "
          f"{_HARDWARE.value + ' s':>10}")
    total = 0.0
    for index in sorted(groups):
        records = groups[index]
        fields = records[0].get("attention", {})
        policy = kj.AttentionConfig.from_fields(fields)
        lengths = [int(r["length"]) for r in records]
        breakdown = cost.tts_cost(config, prompt_len=int(records[0]["prompt_length"]), gen_lens=lengths,
                                  num_samples=len(lengths), attention=policy, hardware=_HARDWARE.value,
                                  dtype=_DTYPE.value)
        total += breakdown.eflops
        print(f"{index:>6} | {len(lengths):>3} | {records[0]['prompt_length']:>10} | {np.mean(lengths):>8.1f} | "
              f"{policy.describe():<48} | {breakdown.eflops:>10.4g} | {breakdown.seconds:>10.4g}")
    print(f"total eFLOPs {total:.4g} ({total / cost.HARDWARE[_HARDWARE.value].peak_flops:.4g} "
          f"{_HARDWARE.value}-seconds)")


def main(argv: list[str]) -> None:
    del argv
    logging.info("process %d of %d, backend %s", jax.process_index(), jax.process_count(), jax.default_backend())
    config = _config(_CONFIG.value)
    if _RESULTS.value:
        _price_results(config, _CONFIG.value)
    else:
        _table(config, _CONFIG.value)


if __name__ == "__main__":
    cli.run(main)
