"""Engine throughput against transformers `generate` run in its own process: a Best-of-N workload with
heavy-tailed lengths (the continuous engine, the static batch, a fixed-length control), and fixed-length greedy
batches.

    python scripts/benchmark_engine.py                       # heavy-tailed: 32 prompts x 8 samples, 16 and 64 slots
    python scripts/benchmark_engine.py --max_num_seqs=16,64 --chunk_steps=16 --repeats=5
    python scripts/benchmark_engine.py --workload=fixed --batch=1,16 --prompt_len=64 --new_tokens=128

--workload=heavy_tailed: a random model (2 layers, a 256-token vocabulary) with 8 EOS ids, so that at
temperature 1 a sample ends about one step in 32: lengths are geometric (mean ~31, the longest of 256 ~130), the
spread of Best-of-N lengths in miniature. "Useful" tokens are those up to and including each sample's EOS. Rows:

- continuous, heavy-tailed: generate(max_num_seqs=S, chunk_steps=K) on the workload;
- continuous, fixed: the same number of sequences, each exactly round(mean length) tokens (no EOS): the same
  total tokens with no spread; "vs fixed" is the heavy-tailed row's time per token over this row's;
- static batch: generate(max_num_seqs=None) on the workload (every sample reserves max_new_tokens and the
  batch runs until its longest sample ends);
- transformers: the same checkpoint through transformers `generate` (sampling, the same EOS ids) in batches of
  --peer_batch sequences; it decodes a batch until its longest sequence ends, and only the useful tokens count.

--workload=fixed: a random 4-layer model (hidden 256, vocabulary 4096); --batch sequences of --prompt_len
random tokens, greedy, exactly --new_tokens each (no EOS), prefill included: the static batch, the continuous
engine with one slot per sequence, and transformers.

transformers always runs alone in its own process: JAX's CPU threads slow torch in a shared process (the
figure this benchmark replaced, 6-7x transformers, was taken that way). Times are medians of --repeats runs after
a warm-up run (compilation excluded), the heavy-tailed and fixed runs of a slot count timed in turn so that the
machine's drift moves both alike; "peak KV" is the cache the run held at most (the pages in use for the
continuous engine, the whole reservation for the static batch).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from absl import flags, logging

import numpy as np

from kinetics_jax import cli

_PROMPTS = flags.DEFINE_integer("prompts", 32, "Prompts.", lower_bound=1)
_SAMPLES = flags.DEFINE_integer("samples", 8, "Samples per prompt (Best-of-N).", lower_bound=1)
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 512, "Budget per sample (most samples end far earlier).",
                                lower_bound=2)
_SLOTS = cli.define_int_list("max_num_seqs", [16, 64], "Decode slots of the continuous engine (one row each).")
_CHUNK = flags.DEFINE_integer("chunk_steps", 16, "Decode steps per compiled call of the continuous engine.",
                              lower_bound=1)
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs per row (median).", lower_bound=1)
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Parameter and compute dtype.")
_PEER = flags.DEFINE_enum("peer", "transformers", ["transformers", "none"], "The peer timed in its own process.")
_PEER_BATCH = flags.DEFINE_integer("peer_batch", 64, "Sequences per transformers generate call.", lower_bound=1)
_WORKLOAD = flags.DEFINE_enum("workload", "heavy_tailed", ["heavy_tailed", "fixed"], "What to time (see above).")
_BATCH = cli.define_int_list("batch", [1, 16], "Sequences per batch (fixed workload).")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 64, "Prompt tokens (fixed workload).", lower_bound=1)
_NEW = flags.DEFINE_integer("new_tokens", 128, "Generated tokens per sequence (fixed workload).", lower_bound=2)
_ROLE = flags.DEFINE_enum("role", "main", ["main", "save", "transformers"],
                          "Internal: this process's part (the peer's processes run with save / transformers).")
_DIR = flags.DEFINE_string("checkpoint_dir", None, "Internal: the random checkpoint (save / transformers roles).")

HF_CONFIGS = {  # transformers Qwen3Config fields of each workload's random model
    "heavy_tailed": dict(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=32, tie_word_embeddings=True,
                         max_position_embeddings=4096, rope_theta=10_000.0),
    "fixed": dict(vocab_size=4096, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=64, tie_word_embeddings=True,
                  max_position_embeddings=4096, rope_theta=10_000.0),
}
HF_CONFIG = HF_CONFIGS["heavy_tailed"]
EOS_IDS = tuple(range(8))  # 8 of 256 ids: a sample ends about one step in 32 at temperature 1


def _prompt_list(prompts: int) -> list[list[int]]:
    rng = np.random.default_rng(0)
    return [rng.integers(len(EOS_IDS), HF_CONFIG["vocab_size"], rng.integers(16, 65)).tolist() for _ in range(prompts)]


def _median(fn, repeats: int) -> tuple[float, object]:
    out = fn()  # warm-up: compiles
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def _interleaved(fns: list, repeats: int) -> list[tuple[float, object]]:
    """(median seconds, last output) of each function, timed in turn `repeats` times after one warm-up each, so
    that a drift of the machine's speed moves every function's times alike."""
    outs = [fn() for fn in fns]
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            outs[i] = fn()
            times[i].append(time.perf_counter() - start)
    return [(statistics.median(t), out) for t, out in zip(times, outs)]


def _save(directory: str) -> None:
    """--role=save: a random transformers Qwen3 checkpoint (float32) in `directory`."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    Qwen3ForCausalLM(Qwen3Config(**HF_CONFIGS[_WORKLOAD.value])).eval().save_pretrained(directory)


def _fixed_prompts(batch: int) -> np.ndarray:
    return np.random.default_rng(batch).integers(0, HF_CONFIGS["fixed"]["vocab_size"], (batch, _PROMPT_LEN.value))


def _transformers(directory: str) -> None:
    """--role=transformers: times transformers generate on the workload; prints one JSON line."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, dtype=getattr(torch, _DTYPE.value)).eval()
    if _WORKLOAD.value == "fixed":
        rows = []
        for batch in cli.int_list(_BATCH):
            ids = torch.as_tensor(_fixed_prompts(batch), dtype=torch.long)

            def greedy() -> int:
                with torch.no_grad():
                    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=_NEW.value,
                                         min_new_tokens=_NEW.value, do_sample=False, pad_token_id=0)
                assert out.shape[1] == ids.shape[1] + _NEW.value
                return batch * _NEW.value

            seconds, tokens = _median(greedy, _REPEATS.value)
            rows.append({"batch": batch, "seconds": seconds, "tokens": tokens})
        print(json.dumps(rows))
        return
    sequences = [p for p in _prompt_list(_PROMPTS.value) for _ in range(_SAMPLES.value)]
    batch = _PEER_BATCH.value

    def run() -> int:
        torch.manual_seed(1)
        useful = 0
        for start in range(0, len(sequences), batch):
            chunk = sequences[start:start + batch]
            width = max(len(p) for p in chunk)
            ids = torch.zeros((len(chunk), width), dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, p in enumerate(chunk):  # left padding, as decoder-only generation needs
                ids[i, width - len(p):], mask[i, width - len(p):] = torch.tensor(p), 1
            with torch.no_grad():
                out = model.generate(ids, attention_mask=mask, max_new_tokens=_MAX_NEW.value, do_sample=True,
                                     temperature=1.0, top_k=0, top_p=1.0, eos_token_id=list(EOS_IDS),
                                     pad_token_id=HF_CONFIG["vocab_size"] - 1)
            new = out[:, width:].numpy()
            for row in new:
                ends = np.flatnonzero(np.isin(row, EOS_IDS))
                useful += int(ends[0]) + 1 if ends.size else row.size
        return useful

    seconds, useful = _median(run, _REPEATS.value)
    print(json.dumps({"seconds": seconds, "tokens": useful}))


def _this_script(role: str, directory: str) -> list[str]:
    """This script in another role, with this run's flags."""
    return [sys.executable, os.path.abspath(__file__), f"--role={role}", f"--checkpoint_dir={directory}",
            f"--workload={_WORKLOAD.value}", f"--prompts={_PROMPTS.value}", f"--samples={_SAMPLES.value}",
            f"--max_new_tokens={_MAX_NEW.value}", f"--repeats={_REPEATS.value}", f"--dtype={_DTYPE.value}",
            f"--peer_batch={_PEER_BATCH.value}", f"--batch={','.join(map(str, cli.int_list(_BATCH)))}",
            f"--prompt_len={_PROMPT_LEN.value}", f"--new_tokens={_NEW.value}"]


def _model_and_peer():
    """(the workload's random model loaded by kinetics_jax, the transformers peer's JSON or None): the
    checkpoint is written and timed by transformers in processes of their own."""
    import jax.numpy as jnp

    import kinetics_jax as kj

    with tempfile.TemporaryDirectory() as directory:
        subprocess.run(_this_script("save", directory), check=True, capture_output=True)
        model = kj.load_hf_checkpoint(directory, dtype=jnp.dtype(_DTYPE.value))
        peer = None
        if _PEER.value == "transformers":
            out = subprocess.run(_this_script("transformers", directory), check=True, capture_output=True, text=True)
            peer = json.loads(out.stdout.strip().splitlines()[-1])
    return model, peer


def _device() -> str:
    import jax

    return f"{jax.devices()[0].device_kind} ({jax.default_backend()})"


def _fixed() -> None:
    import kinetics_jax as kj

    model, peer = _model_and_peer()
    greedy, new = kj.SamplingConfig.greedy_config(), _NEW.value
    peer_of = {row["batch"]: row for row in peer or []}
    print(f"\nfixed: {HF_CONFIGS['fixed']['num_hidden_layers']} layers, hidden {HF_CONFIGS['fixed']['hidden_size']}, "
          f"vocab {HF_CONFIGS['fixed']['vocab_size']}, {_DTYPE.value}, prompt {_PROMPT_LEN.value} + {new} new "
          f"tokens, greedy, prefill included, device: {_device()}")
    print(f"{'batch':>5} | {'static tok/s':>12} | {'continuous tok/s':>16} | {'transformers tok/s':>18} | "
          f"{'static vs transformers':>22}")
    for batch in cli.int_list(_BATCH):
        prompts = _fixed_prompts(batch).tolist()
        rates = []
        for slots in (None, batch):
            seconds, result = _median(lambda: kj.generate(model, prompts, max_new_tokens=new, sampling=greedy,
                                                          max_num_seqs=slots), _REPEATS.value)
            assert (result.lengths == new).all()
            rates.append(batch * new / seconds)
        theirs = peer_of[batch]["tokens"] / peer_of[batch]["seconds"] if batch in peer_of else None
        ratio = f"{rates[0] / theirs:.2f}x" if theirs else ""
        print(f"{batch:>5} | {rates[0]:>12.0f} | {rates[1]:>16.0f} | {'' if theirs is None else f'{theirs:.0f}':>18} | "
              f"{ratio:>22}")


def _heavy_tailed() -> None:
    import kinetics_jax as kj
    from kinetics_jax.cache import PagedLayout

    sampling = kj.SamplingConfig(temperature=1.0, top_k=0, top_p=1.0)
    prompts = _prompt_list(_PROMPTS.value)
    n, budget = _SAMPLES.value, _MAX_NEW.value
    model, peer = _model_and_peer()
    page_bytes = PagedLayout(16).pool_bytes(model.config, 1, model.dtype)
    rows = []

    def generate(**kwargs):
        return kj.generate(model, prompts, num_samples=n, sampling=sampling, seed=1, **kwargs)

    for slots in cli.int_list(_SLOTS):
        heavy_run = lambda: generate(max_new_tokens=budget, eos_token_ids=EOS_IDS, max_num_seqs=slots,
                                     chunk_steps=_CHUNK.value)
        heavy = heavy_run()  # warm-up, and the lengths the fixed control matches
        tokens = int(heavy.lengths.sum())
        fixed_len = max(2, round(tokens / heavy.lengths.size))
        fixed_run = lambda: generate(max_new_tokens=fixed_len, max_num_seqs=slots, chunk_steps=_CHUNK.value)
        (seconds, heavy), (fixed_s, fixed) = _interleaved([heavy_run, fixed_run], _REPEATS.value)
        per_token = (seconds / tokens) / (fixed_s / int(fixed.lengths.sum()))
        rows.append((f"continuous S={slots} K={_CHUNK.value}", "heavy-tailed", tokens, int(heavy.lengths.max()),
                     seconds, heavy.stats.peak_pages * page_bytes, f"{per_token:.2f}x"))
        rows.append((f"continuous S={slots} K={_CHUNK.value}", f"fixed {fixed_len}", int(fixed.lengths.sum()),
                     fixed_len, fixed_s, fixed.stats.peak_pages * page_bytes, "1.00x"))
    static_s, static = _median(lambda: generate(max_new_tokens=budget, eos_token_ids=EOS_IDS), _REPEATS.value)
    reserved = PagedLayout(16).pool_pages([len(p) for p in prompts], n, budget) * page_bytes
    rows.append(("static batch", "heavy-tailed", int(static.lengths.sum()), int(static.lengths.max()), static_s,
                 reserved, ""))
    if peer is not None:
        rows.append((f"transformers (own process, batch {_PEER_BATCH.value})", "heavy-tailed", peer["tokens"], None,
                     peer["seconds"], None, ""))
    print(f"\n{len(prompts)} prompts x {n} samples, max_new_tokens {budget}, {HF_CONFIG['num_hidden_layers']} layers "
          f"hidden {HF_CONFIG['hidden_size']}, {_DTYPE.value}, device: {_device()}")
    print(f"{'engine':<38} | {'lengths':<12} | {'tokens':>6} | {'longest':>7} | {'seconds':>7} | {'tok/s':>8} | "
          f"{'peak KV MiB':>11} | vs fixed")
    for engine, lengths, tokens, longest, seconds, peak, ratio in rows:
        peak_text = "" if peak is None else f"{peak / 2**20:.2f}"
        print(f"{engine:<38} | {lengths:<12} | {tokens:>6} | {'' if longest is None else longest:>7} | "
              f"{seconds:>7.3f} | {tokens / seconds:>8.0f} | {peak_text:>11} | {ratio}")


def main(argv: list[str]) -> None:
    del argv
    if _ROLE.value == "save":
        _save(_DIR.value)
    elif _ROLE.value == "transformers":
        _transformers(_DIR.value)
    else:
        logging.info("benchmark_engine: %s workload", _WORKLOAD.value)
        _fixed() if _WORKLOAD.value == "fixed" else _heavy_tailed()


if __name__ == "__main__":
    cli.run(main)
