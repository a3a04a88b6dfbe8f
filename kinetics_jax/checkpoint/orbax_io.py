"""The project's checkpoint format: orbax arrays in the canonical per-layer layout, plus an HF config.json.

    <dir>/config.json          Hugging Face config (read back with Qwen3Config.from_hf_config)
    <dir>/params/              orbax PyTree: {"embed_tokens": {"embedding"}, "norm": {"scale"}, "lm_head",
                               "layers": {"0": {"self_attn": {"q_proj", ...}, "mlp": {...}, ...}, ...}}
    <dir>/tokenizer.json ...   tokenizer / generation files copied from the source, when present

Writing streams one decoder layer at a time through orbax partial saves, into a temporary directory that is
renamed into place only when complete: a killed conversion never leaves a half-written checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import logging as logging_std
import os
import shutil
from typing import Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

try:  # orbax >= 0.12 exposes v1 under experimental; later releases as orbax.checkpoint.v1
    from orbax.checkpoint import v1 as ocp
except ImportError:  # pragma: no cover - depends on the installed orbax
    from orbax.checkpoint.experimental import v1 as ocp

from kinetics_jax import outputs
from kinetics_jax.checkpoint import layout, shipped
from kinetics_jax.checkpoint.hf import DTYPES, CheckpointError, HFCheckpoint, checked_dtype, load_hf_checkpoint
from kinetics_jax.config import Qwen3Config
from kinetics_jax.model import Qwen3ForCausalLM
from kinetics_jax.model.layers import DType

PARAMS_DIR = "params"
CONFIG_FILE = "config.json"
# Files next to an HF checkpoint that belong to the tokenizer or generation defaults, copied as they are.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "vocab.json", "merges.txt")


def _nest(flat: Mapping[str, object]) -> dict:
    """{"layers.0.self_attn.q_proj": x} -> {"layers": {"0": {"self_attn": {"q_proj": x}}}}."""
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def _flatten(tree: Mapping, prefix: str = "") -> Iterator[tuple[str, object]]:
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping):
            yield from _flatten(value, key + ".")
        else:
            yield key, value


# Write groups in order: group name -> a function that reads that group's {canonical key: array}.
Groups = Mapping[str, Callable[[], dict[str, np.ndarray | jax.Array]]]
JOURNAL = "progress.json"


def _write_json(path: str, value: object) -> None:
    """Writes JSON atomically (a unique temporary file, then rename)."""
    with outputs.replacing(path) as f:
        json.dump(value, f, indent=2)


def _check_output(out_dir: str, copy_from: str | None, overwrite: bool) -> None:
    """Refuses, before anything is written, an existing output without `overwrite` and an output that is, or
    holds, the source directory (replacing it would delete the source)."""
    if os.path.lexists(out_dir) and not overwrite:
        raise outputs.OutputError(f"output directory {out_dir} already exists (pass overwrite=True / --overwrite)")
    if copy_from is not None:
        source, target = os.path.realpath(copy_from), os.path.realpath(out_dir)
        if os.path.commonpath([source, target]) == target:
            raise outputs.OutputError(f"output directory {out_dir} is or holds the source {copy_from}: writing it "
                                      f"would delete the source; choose another output directory")


def _write(out_dir: str | os.PathLike, config: Qwen3Config, groups: Groups, *, source: dict | None,
           copy_from: str | None, overwrite: bool, progress: Mapping[str, int] | None = None) -> None:
    """Writes a checkpoint group by group (one orbax partial save each) into `.<name>.partial` beside `out_dir`,
    then renames it into place, holding the output's lock (kinetics_jax.outputs) throughout: a second writer of
    `out_dir` is refused with OutputBusyError, so the temporary directory and its journal have one writer.

    With a `source` description (JSON-able, e.g. input path, fingerprint and dtype) the write is resumable: a
    journal in the temporary directory lists finished groups, and a rerun with an identical `source` skips them.
    Without one, a failed write removes its temporary directory. `copy_from`: the source directory, whose
    tokenizer files are copied; the output may not be or hold it. `progress` (group name -> its tensors): show
    a bar over tensors, once the output is locked.
    """
    out_dir = os.path.abspath(os.fspath(out_dir))
    _check_output(out_dir, copy_from, overwrite)
    with outputs.exclusive(out_dir, directory=None if overwrite else True):
        _check_output(out_dir, copy_from, overwrite)  # again, now that no other writer can change it
        with tqdm(total=sum((progress or {}).values()), unit="tensor", desc="converting",
                  disable=progress is None) as bar:
            _write_locked(out_dir, config, groups, source=source, copy_from=copy_from,
                          on_group=lambda name: bar.update((progress or {}).get(name, 0)))


def _write_locked(out_dir: str, config: Qwen3Config, groups: Groups, *, source: dict | None,
                  copy_from: str | None, on_group: Callable[[str], None]) -> None:
    parent, name = os.path.split(out_dir)
    tmp = os.path.join(parent, f".{name}.partial")
    journal = os.path.join(tmp, JOURNAL)
    try:
        with open(journal) as f:
            state = json.load(f)
    except (OSError, json.JSONDecodeError):
        state = None
    if source is None or state is None or state.get("source") != source:
        outputs.remove(tmp)
        os.makedirs(tmp)
        state = {"source": source, "done": []}
        _write_json(journal, state)
    elif state["done"]:
        logging.info("resuming %s: %d of %d groups already written", tmp, len(state["done"]), len(groups))
    params = os.path.join(tmp, PARAMS_DIR)
    try:
        for group_name, read in groups.items():
            if group_name not in state["done"]:
                arrays = read()
                # Pop each host array as it is copied, so a group is never held twice.
                tree = _nest({k: jnp.asarray(arrays.pop(k)) for k in list(arrays)})
                try:
                    ocp.partial.save(params, tree)
                except Exception as e:  # orbax exports no public class for this error; match it by name
                    if type(e).__name__ != "PartialSaveReplacementError":
                        raise
                    # The group was committed just before an interruption that came before the journal update.
                state["done"].append(group_name)
                _write_json(journal, state)
            on_group(group_name)
        ocp.partial.finalize(params)
        _write_json(os.path.join(tmp, CONFIG_FILE), config.to_hf_dict())
        for file in TOKENIZER_FILES if copy_from else ():
            if os.path.exists(os.path.join(copy_from, file)):
                shutil.copy2(os.path.join(copy_from, file), os.path.join(tmp, file))
        os.remove(journal)
    except BaseException:
        if source is None:
            outputs.remove(tmp)
        raise
    old = os.path.join(parent, f".{name}.old")
    outputs.remove(old)  # left by a crash between the two renames of an earlier overwrite
    if os.path.lexists(out_dir):
        os.replace(out_dir, old)  # a directory or a plain file: either is removed below
    os.replace(tmp, out_dir)
    outputs.remove(old)


def save_checkpoint(model: Qwen3ForCausalLM, out_dir: str | os.PathLike, *, overwrite: bool = False) -> None:
    """Saves an in-memory model (parameters in their stored dtype) in the project's checkpoint format."""
    groups: dict[str, dict[str, jax.Array]] = {}
    for key, value in layout.iter_canonical(model):
        groups.setdefault(layout.write_group(key), {})[key] = value
    _write(out_dir, model.config, {name: (lambda g=group: dict(g)) for name, group in groups.items()},
           source=None, copy_from=None, overwrite=overwrite)


def convert_hf_checkpoint(hf_dir: str | os.PathLike, out_dir: str | os.PathLike, *, dtype: DType | None = None,
                          overwrite: bool = False, progress: bool = False) -> None:
    """Converts a Hugging Face Qwen3 checkpoint to the project's orbax format, streaming one layer at a time.

    `dtype` casts every parameter (None keeps the stored dtype): one of DTYPES, for a cast to an integer or
    boolean dtype would write a destroyed model (int8 zeroes every weight). The dtype and the whole source are
    validated before anything is written, and the output appears at `out_dir` only when complete. An
    interrupted conversion (killed, or failed on I/O) resumes where it stopped when rerun with the same source
    and dtype: finished layers are kept in `.<out_dir name>.partial` beside `out_dir`. `progress` shows a bar
    over source tensors.
    """
    if dtype is not None:
        checked_dtype(dtype)
    _check_output(os.path.abspath(os.fspath(out_dir)), os.fspath(hf_dir), overwrite)  # before reading the source
    checkpoint = HFCheckpoint(hf_dir)
    if dtype is None and "F64" in checkpoint.stored_dtypes():
        raise ValueError(f"{checkpoint.hf_dir} stores float64 tensors, which the checkpoint format does not keep: "
                         f"pass dtype= one of {', '.join(DTYPES)}")
    checkpoint.check_tied_copy()
    write_groups = checkpoint.write_groups()
    tensors = {name: sum(checkpoint.num_tensors(k) for k in keys) for name, keys in write_groups.items()}
    source = {"hf_dir": os.path.abspath(checkpoint.hf_dir), "files": checkpoint.fingerprint(),
              "dtype": None if dtype is None else np.dtype(dtype).name, "config": checkpoint.config.to_hf_dict()}
    groups = {name: (lambda keys=keys: {k: checkpoint.read(k, dtype) for k in keys})
              for name, keys in write_groups.items()}
    _write(out_dir, checkpoint.config, groups, source=source, copy_from=checkpoint.hf_dir, overwrite=overwrite,
           progress=tensors if progress else None)


def _one_line(text: str, limit: int = 200) -> str:
    """The first line of an orbax / TensorStore error text, without the TensorStore spec it dumps, cut to `limit`
    characters. A TensorStore status reads "CODE: where: where: cause", so a long one keeps its code and its end."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = lines[0].split(" [tensorstore_spec=")[0] if lines else ""
    if len(line) <= limit:
        return line
    code, sep, _ = line.partition(": ")
    head = code + sep if sep and len(code) <= 30 else ""
    return head + "..." + line[-(limit - len(head) - 3):]


def _short_cause(error: BaseException, limit: int = 200) -> str:
    """One line for a restore failure: the innermost cause of `error` (orbax wraps TensorStore's status in an
    exception that dumps the whole TensorStore spec) through `_one_line`, named by its type unless that is a bare
    Exception or ValueError ("JSONDecodeError: Expecting value ...")."""
    while error.__cause__ is not None:
        error = error.__cause__
    line = _one_line(str(error), limit)
    if type(error) not in (Exception, ValueError):
        line = f"{type(error).__name__}: {line}" if line else type(error).__name__
    return line or type(error).__name__


class _CapturedWarnings(logging_std.Filter):
    """While installed on the absl logger, holds back orbax's "... Error details: <cause>" warnings (orbax logs
    why it could not read metadata, then returns None) and keeps their causes, so the error raised can name one.
    `release()` logs the held records after all, for a read that succeeded."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging_std.LogRecord] = []

    @property
    def causes(self) -> list[str]:
        return [_one_line(r.getMessage().split("Error details:", 1)[1]) for r in self.records]

    def filter(self, record: logging_std.LogRecord) -> bool:
        if record.levelno < logging_std.WARNING or "Error details:" not in record.getMessage():
            return True
        self.records.append(record)
        return False

    def release(self) -> None:
        for record in self.records:
            logging_std.getLogger(record.name).handle(record)
        self.records.clear()


@contextlib.contextmanager
def _captured_warnings() -> Iterator[_CapturedWarnings]:
    """Installs a `_CapturedWarnings` on the absl logger (where orbax logs) for the duration of the block."""
    captured, logger = _CapturedWarnings(), logging_std.getLogger("absl")
    logger.addFilter(captured)
    try:
        yield captured
    finally:
        logger.removeFilter(captured)


def _checked_metadata(params_dir: str, config: Qwen3Config) -> dict[str, tuple[int, ...]]:
    """Stored shapes by canonical key, checked against the config (missing / unexpected / wrong shape) and for a
    floating dtype (an integer array would be cast to a destroyed weight)."""
    try:
        with _captured_warnings() as held:
            metadata = ocp.metadata(params_dir).metadata
    except Exception as e:  # orbax raises several types for a missing or damaged checkpoint
        raise CheckpointError(f"cannot read orbax checkpoint {params_dir}: {_short_cause(e)}") from None
    if not isinstance(metadata, Mapping):  # orbax logs the cause and returns None for unreadable array metadata
        cause = held.causes[0] if held.causes else f"a damaged or missing file under {PARAMS_DIR}/"
        raise CheckpointError(f"cannot read orbax checkpoint {params_dir}: its array metadata is unreadable: {cause}")
    held.release()
    stored, dtypes = {}, {}
    for key, meta in _flatten(metadata):
        shape, dtype = getattr(meta, "shape", None), getattr(meta, "dtype", None)
        if shape is None or dtype is None:
            raise CheckpointError(f"checkpoint {params_dir} holds {key!r}, which is not an array")
        stored[key], dtypes[key] = tuple(shape), dtype
    expected = layout.canonical_shapes(config)
    missing, unexpected = set(expected) - set(stored), set(stored) - set(expected)
    if missing:
        raise CheckpointError(f"checkpoint {params_dir} is missing {len(missing)} array(s): {sorted(missing)[:5]}")
    if unexpected:
        raise CheckpointError(f"checkpoint {params_dir} has unexpected array(s): {sorted(unexpected)[:5]}")
    for key, shape in expected.items():
        if stored[key] != shape:
            raise CheckpointError(f"array {key!r} in {params_dir} has shape {stored[key]}, but config.json implies "
                                  f"{shape}")
        if not jnp.issubdtype(dtypes[key], jnp.floating):
            raise CheckpointError(f"array {key!r} in {params_dir} has dtype {np.dtype(dtypes[key]).name}; only "
                                  f"floating checkpoints can be loaded")
    return stored


def _restore(ckpt_dir: str, abstract: dict[str, jax.ShapeDtypeStruct], partial: ocp.Context
             ) -> dict[str, jax.Array]:
    """The arrays of `abstract` (canonical key -> target) restored from `ckpt_dir`/params under the partial-load
    context `partial`.

    Raises CheckpointError "checkpoint <dir>: cannot read array <key>: <cause>" for damaged data: with several
    keys, each is retried alone to name the first unreadable one."""
    params_dir = os.path.join(ckpt_dir, PARAMS_DIR)
    try:
        with partial:
            return dict(_flatten(ocp.load(params_dir, _nest(abstract))))
    except Exception as error:  # TensorStore, JSON and orbax errors alike: any of them means unreadable data
        culprit, cause = ", ".join(abstract), error
        for key in abstract if len(abstract) > 1 else ():
            try:
                with partial:
                    ocp.load(params_dir, _nest({key: abstract[key]}))
            except Exception as e:
                culprit, cause = key, e
                break
        raise CheckpointError(f"checkpoint {ckpt_dir}: cannot read array {culprit}: {_short_cause(cause)}") from None


def load_checkpoint(ckpt_dir: str | os.PathLike, *, dtype: DType, param_dtype: DType | None = None,
                    mesh: Mesh | None = None) -> Qwen3ForCausalLM:
    """Restores a checkpoint written by `convert_hf_checkpoint` / `save_checkpoint`, from its directory or by the
    name of a shipped one ("tiny-s", "tiny-m", "tiny-l": kinetics_jax/checkpoint/shipped.py).

    Each model leaf is restored from its per-layer arrays (cast to `param_dtype`, default `dtype`) and stacked,
    so peak memory is the model plus one leaf. With a `mesh` every array is restored straight into its sharding
    under kinetics_jax.sharding.axes.RULES: each process reads only the shards its devices hold, and no process
    ever holds a whole parameter on the host. Both dtypes must be in DTYPES (ValueError otherwise). A missing,
    damaged or mismatched checkpoint raises CheckpointError, one line naming the checkpoint and the array; a bad
    config.json, ValueError naming the file and field.
    """
    checked_dtype(dtype)
    if param_dtype is not None:
        checked_dtype(param_dtype, "param_dtype")
    ckpt_dir = os.path.abspath(shipped.resolve(ckpt_dir))  # orbax metadata lookups need an absolute path
    if not os.path.isdir(ckpt_dir):
        raise CheckpointError(f"checkpoint directory not found: {ckpt_dir}")
    config = Qwen3Config.from_hf_config(os.path.join(ckpt_dir, CONFIG_FILE))
    _checked_metadata(os.path.join(ckpt_dir, PARAMS_DIR), config)
    partial = ocp.Context()
    partial.pytree.loading.partial_load = True  # restore only the keys asked for

    def read(keys: Sequence[str], target: jax.ShapeDtypeStruct, stacked: bool) -> jax.Array:
        if stacked:  # one layer's sharding: the leaf's without its leading (unsplit) "layers" axis
            spec = target.sharding.spec if isinstance(target.sharding, NamedSharding) else None
            layer = (target.sharding if spec is None else
                     NamedSharding(target.sharding.mesh, PartitionSpec(*tuple(spec)[1:])))
            abstract = {k: jax.ShapeDtypeStruct(target.shape[1:], target.dtype, sharding=layer) for k in keys}
        else:
            abstract = {keys[0]: target}
        arrays = _restore(ckpt_dir, abstract, partial)
        if not stacked:
            return arrays[keys[0]]
        stack = jax.jit(lambda *xs: jnp.stack(xs), out_shardings=target.sharding)
        return stack(*(arrays.pop(k) for k in keys))

    return layout.assemble(config, read, dtype=dtype, param_dtype=dtype if param_dtype is None else param_dtype,
                           mesh=mesh)


def load_model(path: str | os.PathLike, *, dtype: DType, mesh: Mesh | None = None) -> Qwen3ForCausalLM:
    """Loads either format: the project's orbax checkpoint (a directory with params/) or a Hugging Face
    directory (config.json + safetensors), or a shipped checkpoint's name ("tiny-s", see checkpoint/shipped.py);
    `mesh`: place the parameters on it (see load_checkpoint)."""
    path = shipped.resolve(path)
    if os.path.isdir(os.path.join(path, "params")):
        return load_checkpoint(path, dtype=dtype, mesh=mesh)
    return load_hf_checkpoint(path, dtype=dtype, mesh=mesh)
