"""Converts a Hugging Face Qwen3 / Qwen3-MoE safetensors checkpoint to the kinetics_jax orbax format.

    python scripts/convert_checkpoint.py --hf_dir=Qwen3-8B/ --output_dir=ckpt/qwen3-8b [--dtype=bfloat16]

The source is validated completely before anything is written, tensors are streamed one layer at a time, and
the output directory appears only when the conversion is complete. `--verify` then reloads the result and
compares its logits with the source checkpoint on a random batch.
"""

from __future__ import annotations

import errno
import logging as pylogging
import os

from absl import flags, logging

import jax
import jax.numpy as jnp
import numpy as np

import kinetics_jax as kj
from kinetics_jax import cli

_HF_DIR = flags.DEFINE_string("hf_dir", None, "Hugging Face checkpoint directory (config.json + safetensors).",
                              required=True)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where to write the orbax checkpoint.", required=True)
_DTYPE = flags.DEFINE_enum("dtype", None, ["bfloat16", "float16", "float32"],
                           "Cast parameters to this dtype (default: keep the stored dtype).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing --output_dir.")
_VERIFY = flags.DEFINE_bool("verify", False, "Reload the output and compare logits with the source checkpoint.")


# I/O errors that a rerun cannot fix (the others, e.g. a full disk or a failing network file system, can).
_PERMANENT = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST)


def _verify(hf_dir: str, out_dir: str) -> float:
    """Max |logit difference| between the source (float32) and the converted checkpoint on a random batch."""
    source = kj.load_hf_checkpoint(hf_dir, dtype=jnp.float32)
    converted = kj.load_checkpoint(out_dir, dtype=jnp.float32)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, source.config.vocab_size, (2, 16)), jnp.int32)
    return float(jnp.max(jnp.abs(source(ids) - converted(ids))))


def _quiet_orbax(record: pylogging.LogRecord) -> bool:
    """absl log filter: drop orbax's per-operation INFO lines (hundreds per conversion); keep its warnings."""
    return record.levelno >= pylogging.WARNING or f"{os.sep}orbax{os.sep}" not in record.pathname


def main(argv: list[str]) -> int:
    del argv
    logging.get_absl_handler().addFilter(_quiet_orbax)
    logging.info("process %d of %d", jax.process_index(), jax.process_count())
    try:
        kj.convert_hf_checkpoint(_HF_DIR.value, _OUTPUT_DIR.value, dtype=_DTYPE.value,
                                 overwrite=_OVERWRITE.value, progress=True)
    except OSError as e:
        if e.errno in _PERMANENT:  # rerunning cannot help: the one-line report names the path
            raise
        cli.fail(f"conversion interrupted ({e}); the finished layers are kept: rerun the same command to resume")
    logging.info("wrote %s", _OUTPUT_DIR.value)
    if _VERIFY.value:
        diff = _verify(_HF_DIR.value, _OUTPUT_DIR.value)
        logging.info("verify: max |logit diff| source vs converted = %.3g", diff)
    return 0


if __name__ == "__main__":
    cli.run(main)
