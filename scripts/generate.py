"""Samples continuations of prompts with a Qwen3 checkpoint (Best-of-N or long chain of thought).

    python scripts/generate.py --checkpoint=ckpt/qwen3-0.6b --prompt="What is 17 * 23?" --num_samples=8 \
        --max_new_tokens=2048 --output=runs/samples.jsonl [--attention=block_topk-1024 \
        --attention_backend=pallas]

With no --checkpoint it runs on the embedded tiny checkpoint (random weights: the text is meaningless).
--checkpoint takes the project's orbax format or a Hugging Face directory. Prompts are wrapped in the model's
chat template (thinking on by default) when its tokenizer has one. Each output line is one (prompt, sample):
{"prompt_index", "sample_index", "prompt", "prompt_length", "text", "token_ids", "length", "finish_reason",
"attention"} (prompt_length in tokens, chat template included; attention: AttentionConfig.to_fields()); the file
is written to a unique temporary path and renamed when complete. The prompts, the flags and the output path are
checked before the model is loaded, and the output is locked until it is in place: a second generate.py writing
the same --output is refused. All prompts x samples stream through one continuous engine (--max_num_seqs decode
slots, refilled as samples finish; --chunk_steps steps per compiled call). Prompt i draws from random stream i
(its index in the input), so its samples do not depend on the slots, the other prompts or the mesh.

On several devices or hosts add --mesh_shape=data,model (and, for an explicit multi-process start,
--coordinator_address / --num_processes / --process_id); every process runs the same command and process 0
writes the output (see README "Running on a pod").
"""

from __future__ import annotations

import contextlib
import json
import os
import time

from absl import flags, logging

import jax.numpy as jnp
from tqdm import tqdm

import kinetics_jax as kj
from kinetics_jax import cli, outputs
from kinetics_jax.policies import flags as attention_flags
from kinetics_jax.sampling import engine
from kinetics_jax.sampling import flags as sampling_flags
from kinetics_jax.sharding import flags as sharding_flags

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
sampling_flags.define_flags()
sampling_flags.define_engine_flags()
_REPETITION = flags.DEFINE_bool("repetition_stop", False, "Stop samples that loop (Kinetics rule).")
attention_flags.define_flags()
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "Compute and parameter dtype.")
_OUTPUT = flags.DEFINE_string("output", None, "jsonl to write (default: log the texts only); process 0 writes it.")
sharding_flags.define_flags()


def _prompt_of(record: object, where: str) -> str:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: a line must be a JSON object, got {type(record).__name__}")
    text = next((record[k] for k in ("prompt", "problem", "question") if k in record), None)
    if text is None:
        raise ValueError(f"{where}: no 'prompt', 'problem' or 'question' field")
    if not isinstance(text, str) or not text:
        raise ValueError(f"{where}: the prompt must be a non-empty string, got {text!r:.60}")
    return text


def _read_prompts() -> list[str]:
    """--prompt values, then --prompts_file's prompts; every line is checked before any compute."""
    prompts = list(_PROMPT.value or [])
    path = _PROMPTS_FILE.value
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().split("\n")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            if path.endswith(".jsonl"):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not JSON ({e.msg} at column {e.colno})") from None
                prompts.append(_prompt_of(record, f"{path}:{n}"))
            else:
                prompts.append(line)
        if not prompts:
            raise ValueError(f"{path} holds no prompts")
    if not prompts:
        raise ValueError("give --prompt or --prompts_file")
    return prompts


def _records(texts: list[str], ids: list[list[int]], tokenizer: kj.Tokenizer, model: kj.Qwen3ForCausalLM,
             sampling: kj.SamplingConfig, attention: kj.AttentionConfig, mesh) -> tuple[list[dict], int]:
    """The output records of every (prompt, sample) in (prompt, sample) order, and the number of generated
    tokens. All prompts x samples stream through one continuous engine; prompt i draws from stream i, so its
    samples do not depend on the other prompts, the slots or the mesh."""
    records: list[dict] = []
    request = dict(prompts=ids, num_samples=_NUM_SAMPLES.value, max_new_tokens=_MAX_NEW.value, attention=attention,
                   seed=_SEED.value, stream_ids=list(range(len(ids))), eos_token_ids=tokenizer.eos_token_ids,
                   vocab_size=tokenizer.vocab_size, mesh=mesh, **sampling_flags.engine_from_flags())
    engine.check(model, **request)  # before any compute
    bar = tqdm(total=len(ids) * _NUM_SAMPLES.value, desc="samples", unit="sample",
               disable=not kj.sharding.is_writer())

    def collect(samples: list[kj.FinishedSample]) -> None:
        for f in samples:
            records.append({"prompt_index": f.prompt, "sample_index": f.sample, "prompt": texts[f.prompt],
                            "prompt_length": len(ids[f.prompt]),
                            "text": tokenizer.decode(f.tokens, skip_special_tokens=True), "token_ids": f.tokens,
                            "length": len(f.tokens), "finish_reason": f.finish_reason,
                            "attention": attention.to_fields()})
        bar.update(len(samples))

    kj.generate(model, **request, sampling=sampling, on_finish=collect,
                repetition=kj.RepetitionStop() if _REPETITION.value else None)
    bar.close()
    records.sort(key=lambda r: (r["prompt_index"], r["sample_index"]))
    return records, sum(r["length"] for r in records)


def main(argv: list[str]) -> int:
    del argv
    sampling = sampling_flags.config_from_flags()
    attention = attention_flags.config_from_flags()
    mesh = sharding_flags.mesh_from_flags()
    texts = _read_prompts()
    writes = _OUTPUT.value is not None and kj.sharding.is_writer()
    # The output is checked and locked before the model is loaded: a second writer or an unwritable path is
    # refused before any compute, and the lock is held until the file is in place.
    with outputs.exclusive(_OUTPUT.value) if writes else contextlib.nullcontext():
        model = kj.load_model(_CHECKPOINT.value, dtype=jnp.dtype(_DTYPE.value), mesh=mesh)
        tokenizer = kj.Tokenizer.from_dir(_CHECKPOINT.value)
        chat = _CHAT.value and tokenizer.has_chat_template
        ids = [tokenizer.apply_chat_template([{"role": "user", "content": t}], enable_thinking=_THINKING.value)
               if chat else tokenizer.encode(t) for t in texts]
        start = time.perf_counter()
        records, generated = _records(texts, ids, tokenizer, model, sampling, attention, mesh)
        seconds = time.perf_counter() - start
        logging.info("generated %d tokens in %.2f s (%.1f tokens/s, compilation included)", generated, seconds,
                     generated / seconds)
        if writes:
            with outputs.replacing(_OUTPUT.value, encoding="utf-8") as f:
                for record in records:
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
            logging.info("wrote %d samples to %s", len(records), _OUTPUT.value)
    for record in records[:4]:
        logging.info("prompt %d sample %d (%s, %d tokens): %r", record["prompt_index"], record["sample_index"],
                     record["finish_reason"], record["length"], record["text"][:200])
    return 0


if __name__ == "__main__":
    cli.run(main)
