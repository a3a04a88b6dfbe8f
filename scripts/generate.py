"""Samples continuations of prompts with a Qwen3 checkpoint (Best-of-N or long chain of thought).

    python scripts/generate.py --checkpoint=ckpt/qwen3-0.6b --prompt="What is 17 * 23?" --num_samples=8 \
        --max_new_tokens=2048 --output=runs/samples.jsonl [--attention=block_topk --block_topk=64 \
        --attention_backend=pallas]

With no --checkpoint it runs on the embedded tiny checkpoint (random weights: the text is meaningless).
--checkpoint takes the project's orbax format or a Hugging Face directory. Prompts are wrapped in the model's
chat template (thinking on by default) when its tokenizer has one. Each output line is one (prompt, sample):
{"prompt_index", "sample_index", "prompt", "prompt_length", "text", "token_ids", "length", "finish_reason",
"attention"} (prompt_length in tokens, chat template included; attention: the AttentionConfig fields); the file
is written to a temporary path and renamed when complete.

On several devices or hosts add --mesh_shape=data,model (and, for an explicit multi-process start,
--coordinator_address / --num_processes / --process_id); every process runs the same command and process 0
writes the output (see README "Running on a pod").
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

from absl import app, flags, logging

import jax.numpy as jnp
from tqdm import tqdm

import kinetics_jax as kj
from kinetics_jax import distributed_flags
from kinetics_jax.attention import flags as attention_flags
from kinetics_jax.sampling import flags as sampling_flags

EMBEDDED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kinetics_jax", "assets",
                        "tiny-random-qwen3")

_CHECKPOINT = flags.DEFINE_string("checkpoint", EMBEDDED, "orbax checkpoint or Hugging Face directory.")
_PROMPT = flags.DEFINE_multi_string("prompt", None, "A prompt (repeatable).")
_PROMPTS_FILE = flags.DEFINE_string("prompts_file", None, "jsonl with a 'prompt' (or 'problem' / 'question') "
                                    "field per line, or plain text with one prompt per line.")
_CHAT = flags.DEFINE_bool("chat", True, "Wrap prompts in the chat template (when the tokenizer has one).")
_THINKING = flags.DEFINE_bool("enable_thinking", True, "Qwen3 thinking mode in the chat template.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "Samples per prompt (Best-of-N).", lower_bound=1)
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 256, "Generated tokens per sample at most.", lower_bound=1)
_BATCH = flags.DEFINE_integer("prompts_per_batch", 8, "Prompts decoded together (x num_samples sequences).",
                              lower_bound=1)
sampling_flags.define_flags()
_REPETITION = flags.DEFINE_bool("repetition_stop", False, "Stop samples that loop (Kinetics rule).")
attention_flags.define_flags()
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "Compute and parameter dtype.")
_OUTPUT = flags.DEFINE_string("output", None, "jsonl to write (default: log the texts only); process 0 writes it.")
distributed_flags.define_flags()


def _read_prompts() -> list[str]:
    prompts = list(_PROMPT.value or [])
    if _PROMPTS_FILE.value:
        with open(_PROMPTS_FILE.value) as f:
            for n, line in enumerate(f, 1):
                line = line.rstrip("\n")
                if not line.strip():
                    continue
                if _PROMPTS_FILE.value.endswith(".jsonl"):
                    record = json.loads(line)
                    text = next((record[k] for k in ("prompt", "problem", "question") if k in record), None)
                    if text is None:
                        raise app.UsageError(f"{_PROMPTS_FILE.value}:{n} has no 'prompt'/'problem'/'question'")
                    prompts.append(text)
                else:
                    prompts.append(line)
    if not prompts:
        raise app.UsageError("give --prompt or --prompts_file")
    return prompts


def main(argv: list[str]) -> int:
    del argv
    try:
        sampling = sampling_flags.config_from_flags()
        attention = attention_flags.config_from_flags()
        mesh = distributed_flags.mesh_from_flags()
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    texts = _read_prompts()
    model = kj.load_model(_CHECKPOINT.value, dtype=jnp.dtype(_DTYPE.value), mesh=mesh)
    tokenizer = kj.Tokenizer.from_dir(_CHECKPOINT.value)
    chat = _CHAT.value and tokenizer.has_chat_template
    ids = [tokenizer.apply_chat_template([{"role": "user", "content": t}], enable_thinking=_THINKING.value)
           if chat else tokenizer.encode(t) for t in texts]
    records, generated, start = [], 0, time.perf_counter()
    batches = range(0, len(ids), _BATCH.value)
    for first in tqdm(batches, desc="prompts", unit="batch", disable=not kj.distributed.is_writer()):
        result = kj.generate(model, ids[first:first + _BATCH.value], num_samples=_NUM_SAMPLES.value,
                             max_new_tokens=_MAX_NEW.value, sampling=sampling,
                             attention=attention, seed=_SEED.value,
                             eos_token_ids=tokenizer.eos_token_ids, vocab_size=tokenizer.vocab_size,
                             repetition=kj.RepetitionStop() if _REPETITION.value else None, mesh=mesh)
        generated += int(result.lengths.sum())
        for p in range(result.tokens.shape[0]):
            for s in range(result.tokens.shape[1]):
                tokens = result.sequences(p, s)
                records.append({"prompt_index": first + p, "sample_index": s, "prompt": texts[first + p],
                                "prompt_length": int(result.prompt_lengths[p]),
                                "text": tokenizer.decode(tokens, skip_special_tokens=True), "token_ids": tokens,
                                "length": len(tokens), "finish_reason": str(result.finish_reasons[p, s]),
                                "attention": dataclasses.asdict(attention)})
    seconds = time.perf_counter() - start
    logging.info("generated %d tokens in %.2f s (%.1f tokens/s, compilation included)", generated, seconds,
                 generated / seconds)
    if _OUTPUT.value and kj.distributed.is_writer():
        os.makedirs(os.path.dirname(os.path.abspath(_OUTPUT.value)), exist_ok=True)
        with open(_OUTPUT.value + ".tmp", "w") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(_OUTPUT.value + ".tmp", _OUTPUT.value)
        logging.info("wrote %d samples to %s", len(records), _OUTPUT.value)
    for record in records[:4]:
        logging.info("prompt %d sample %d (%s, %d tokens): %r", record["prompt_index"], record["sample_index"],
                     record["finish_reason"], record["length"], record["text"][:200])
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main))
