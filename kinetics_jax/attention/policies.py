"""Decode-attention policies: `AttentionConfig` names which cached KV tokens each decode step attends.

The semantics (KINETICS.md §3; `reference.py` is the executable spec). A sequence has `n` cached tokens at a
decode step (the current token included). Choices are made per KV head and shared by its query group; the score
used for choosing is the query-group mean.

- dense: all n tokens.
- topk (the oracle upper bound): the first `sink` tokens, the last `local` tokens, and from the middle the `topk`
  tokens with the highest group-mean logit q.k. Active only when n > sink + topk + local (dense below).
- block_topk (the tractable method): the middle [sink, n - local) is cut into blocks of `block_size` tokens,
  aligned to start right after the sink; the trailing partial block joins the local window. A block's score is
  the group-mean query . the block's mean key, kept in the cache dtype ("mean"), or the Quest upper bound
  sum_d max(q_d min_d, q_d max_d) over the block's channel-wise key min / max, averaged over the group
  ("quest"). The `block_topk` best blocks are kept. Active when there are more than `block_topk` full blocks
  (dense below: every block is kept).
- sliding_window: the first `sink` tokens and the last `local` tokens.

Prefill is always dense, and so are the layers in `dense_layers` (the original keeps layer 0 dense).
`block_size` is also the page size of the KV cache, so a selected block is one cache page; the kernels read
several pages per tile, so any power of two works on every backend.
"""

from __future__ import annotations

import dataclasses

from kinetics_jax.cache import checked_int

KINDS = ("dense", "topk", "block_topk", "sliding_window")
BACKENDS = ("xla", "pallas")
SCORES = ("mean", "quest")


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
    """Which KV tokens a decode step attends, and which implementation reads them.

    kind: "dense" | "topk" | "block_topk" | "sliding_window"; sink, local: tokens always kept at the start / end;
    topk: tokens chosen per step (kind "topk"); block_size: tokens per block and per cache page (a power of two);
    block_topk: blocks chosen per step (kind "block_topk"); score: "mean" | "quest" (kind "block_topk", default
    "mean"); dense_layers: layer indices that stay dense; backend: "xla" (pure JAX) or "pallas" (the kernels in
    pallas_kernels: Triton on GPU, Mosaic on TPU, interpret mode on CPU); tile_tokens: KV tokens a kernel reads
    per loop iteration, tile_tokens / block_size pages (a power of two >= 16; None: each kernel's default).
    """

    kind: str = "dense"
    sink: int = 4
    local: int = 0
    topk: int | None = None
    block_size: int = 16
    block_topk: int | None = None
    score: str | None = None
    dense_layers: tuple[int, ...] = (0,)
    backend: str = "xla"
    tile_tokens: int | None = None

    def __post_init__(self) -> None:
        def bad(field: str, why: str) -> ValueError:
            return ValueError(f"AttentionConfig.{field}: {why} (got {getattr(self, field)!r})")

        if self.kind not in KINDS:
            raise bad("kind", f"must be one of {KINDS}")
        if self.backend not in BACKENDS:
            raise bad("backend", f"must be one of {BACKENDS}")
        self._check_integers()
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise bad("block_size", "must be a power of two (it is also the KV cache page size)")
        if len(set(self.dense_layers)) != len(self.dense_layers):
            raise bad("dense_layers", "must be distinct layer indices >= 0")
        for field, owner in (("topk", "topk"), ("block_topk", "block_topk"), ("score", "block_topk")):
            if getattr(self, field) is not None and self.kind != owner:
                raise bad(field, f"belongs to kind {owner!r}, not {self.kind!r}")
        if self.kind == "dense" and (self.sink, self.local) != (4, 0):
            raise ValueError(f"AttentionConfig.sink / local do not apply to kind 'dense' "
                             f"(got sink={self.sink}, local={self.local})")
        if self.kind in ("topk", "block_topk") and getattr(self, self.kind) is None:
            raise bad(self.kind, f"kind {self.kind!r} needs a budget >= 1 (a budget of 0 attends nothing)")
        if self.kind == "block_topk":
            object.__setattr__(self, "score", self.score or "mean")
            if self.score not in SCORES:
                raise bad("score", f"must be one of {SCORES}")
        if self.kind == "sliding_window" and self.local < 1:
            raise bad("local", "kind 'sliding_window' needs local >= 1 (a budget of 0 attends nothing)")
        if self.tile_tokens is not None and self.tile_tokens & (self.tile_tokens - 1):
            raise bad("tile_tokens", "must be a power of two >= 16, or None for the kernels' defaults")
        if self.kind == "topk" and self.backend == "pallas":
            raise bad("backend", "kind 'topk' is an oracle that scores every cached key; it has no Pallas kernel, "
                                 "use backend 'xla'")

    def _check_integers(self) -> None:
        """The integer fields through the package's one integer rule (cache.checked_int: numpy integers are
        taken and stored as int, bools and floats refused), with their lower bounds."""
        def store(field: str, value: object) -> None:
            object.__setattr__(self, field, value)

        for field in ("sink", "local", "block_size"):
            store(field, checked_int(getattr(self, field), f"AttentionConfig.{field}", minimum=0))
        budget_why = "a budget of 0 attends nothing"
        for field, minimum, why in (("topk", 1, budget_why), ("block_topk", 1, budget_why),
                                    ("tile_tokens", 16, "a power of two >= 16, or None for the kernels' defaults")):
            if getattr(self, field) is not None:
                store(field, checked_int(getattr(self, field), f"AttentionConfig.{field}", minimum=minimum, why=why))
        store("dense_layers", tuple(checked_int(i, "AttentionConfig.dense_layers", minimum=0,
                                                why="distinct layer indices") for i in self.dense_layers))

    @property
    def sparse(self) -> bool:
        return self.kind != "dense"

    @property
    def budget(self) -> int | None:
        """KV tokens attended per sparse layer and step once the policy is active (None for dense)."""
        if self.kind == "topk":
            return self.sink + self.topk + self.local
        if self.kind == "block_topk":
            return self.sink + self.local + self.block_size * self.block_topk
        if self.kind == "sliding_window":
            return self.sink + self.local
        return None

    @property
    def page_offset(self) -> int:
        """Empty slots before token 0 in a sequence's first cache page: block_topk shifts the pages so that
        blocks, which start right after the sink, are whole pages (the sink fills the first pages)."""
        return (-self.sink) % self.block_size if self.kind == "block_topk" else 0

    @property
    def summaries(self) -> tuple[str, ...]:
        """The per-page key summaries the cache keeps for this policy (KVCache fields): the mean key for
        block_topk "mean", the channel-wise min and max for "quest", none otherwise."""
        if self.kind != "block_topk":
            return ()
        return ("k_mean",) if self.score == "mean" else ("k_min", "k_max")

    def describe(self) -> str:
        """A short label, e.g. "block_topk(sink=4, local=0, 64x16, mean, pallas)"."""
        tile = [] if self.tile_tokens is None else [f"tile={self.tile_tokens}"]
        if self.kind == "dense":
            return f"dense({', '.join([self.backend] + tile)})"
        parts = [f"sink={self.sink}", f"local={self.local}"]
        if self.kind == "topk":
            parts.append(f"topk={self.topk}")
        if self.kind == "block_topk":
            parts += [f"{self.block_topk}x{self.block_size}", self.score]
        return f"{self.kind}({', '.join(parts + [self.backend] + tile)})"

    def check_layers(self, num_layers: int) -> None:
        """Raises if a dense layer index is outside a model of `num_layers` layers."""
        outside = [i for i in self.dense_layers if i >= num_layers]
        if outside:
            raise ValueError(f"AttentionConfig.dense_layers has layer {outside[0]} but the model has "
                             f"{num_layers} layers")
