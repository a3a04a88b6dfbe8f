"""AttentionConfig: defaults, derived numbers, and validation that names the bad field."""

from __future__ import annotations

import numpy as np
import pytest

from kinetics_jax import AttentionConfig


def test_defaults_and_budgets():
    assert AttentionConfig() == AttentionConfig(kind="dense", sink=4, local=0, block_size=16, dense_layers=(0,),
                                                backend="xla")
    block = AttentionConfig(kind="block_topk", block_topk=64)
    assert block.score == "mean" and block.budget == 4 + 16 * 64
    assert block.page_offset == 12  # sink 4 fills the last 4 slots of the first page: blocks are whole pages
    assert AttentionConfig(kind="block_topk", sink=20, block_topk=1).page_offset == 12
    assert AttentionConfig(kind="block_topk", sink=32, block_topk=1).page_offset == 0
    assert AttentionConfig(kind="topk", topk=100, local=28).budget == 132
    assert AttentionConfig(kind="sliding_window", local=60).budget == 64
    assert AttentionConfig(kind="sliding_window", local=60).page_offset == 0
    assert AttentionConfig(kind="block_topk", block_topk=2, score="quest").summaries == ("k_min", "k_max")
    assert AttentionConfig(kind="block_topk", block_topk=2).summaries == ("k_mean",)
    assert AttentionConfig().summaries == AttentionConfig(kind="topk", topk=4).summaries == ()
    AttentionConfig(kind="block_topk", block_topk=256, block_size=8, backend="pallas")  # the paper's 8 x 256
    assert AttentionConfig(dense_layers=[0, 3]).dense_layers == (0, 3)
    hash(AttentionConfig(kind="block_topk", block_topk=2))  # a static jit argument


@pytest.mark.parametrize("kwargs,field", [
    (dict(kind="sparse"), "kind"),
    (dict(backend="cuda"), "backend"),
    (dict(kind="topk", topk=0), "topk"),
    (dict(kind="topk"), "topk"),
    (dict(kind="block_topk", block_topk=0), "block_topk"),
    (dict(kind="block_topk", block_topk=4, block_size=24), "block_size"),
    (dict(kind="block_topk", block_topk=4, block_size=0), "block_size"),
    (dict(kind="block_topk", block_topk=4, score="max"), "score"),
    (dict(kind="sliding_window"), "local"),
    (dict(kind="sliding_window", local=8, topk=3), "topk"),
    (dict(kind="topk", topk=8, block_topk=3), "block_topk"),
    (dict(kind="topk", topk=8, score="mean"), "score"),
    (dict(kind="dense", sink=8), "sink"),
    (dict(kind="block_topk", block_topk=4, sink=-1), "sink"),
    (dict(dense_layers=(0, 0)), "dense_layers"),
    (dict(dense_layers=(-1,)), "dense_layers"),
    (dict(kind="topk", topk=8, backend="pallas"), "backend"),
    (dict(kind="block_topk", block_topk=4.0), "block_topk must be an integer >= 1"),
    (dict(kind="block_topk", block_topk=True), "block_topk must be an integer .*a bool"),
    (dict(kind="block_topk", block_topk=4, sink=np.float64(4)), "sink must be an integer"),
    (dict(dense_layers=(0.0,)), "dense_layers must be an integer"),
    (dict(tile_tokens=np.float32(32)), "tile_tokens must be an integer"),
    (dict(tile_tokens=8), "tile_tokens must be an integer >= 16"),
    (dict(tile_tokens=48), "tile_tokens"),
])
def test_bad_fields_are_named(kwargs, field):
    with pytest.raises(ValueError, match=field):
        AttentionConfig(**kwargs)


def test_numpy_integers_are_taken_and_stored_as_int():
    """np.int64(4) used to be refused ("needs a budget >= 1"); it now makes the same config (equal and
    hash-equal, it is a static jit argument) as 4."""
    ours = AttentionConfig(kind="block_topk", block_topk=np.int64(4), sink=np.int32(4), local=np.uint8(0),
                           block_size=np.int64(16), dense_layers=np.array([0, 2]), tile_tokens=np.int64(32))
    ref = AttentionConfig(kind="block_topk", block_topk=4, sink=4, local=0, block_size=16, dense_layers=(0, 2),
                          tile_tokens=32)
    assert ours == ref and hash(ours) == hash(ref) and ours.page_offset == 12
    assert {type(v) for v in (ours.block_topk, ours.sink, ours.local, ours.block_size, ours.tile_tokens,
                              *ours.dense_layers)} == {int}
    assert AttentionConfig(kind="topk", topk=np.int32(8)).topk == 8


def test_dense_layers_checked_against_the_model():
    AttentionConfig(dense_layers=(0, 3)).check_layers(4)
    with pytest.raises(ValueError, match="dense_layers has layer 4"):
        AttentionConfig(dense_layers=(0, 4)).check_layers(4)
