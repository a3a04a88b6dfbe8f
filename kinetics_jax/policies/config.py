"""`AttentionConfig`: a decode-attention policy and how the engine runs it (layers, backend, cache page, tile)."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from kinetics_jax.checks import checked_int
from kinetics_jax.policies.base import Policy, parse_policy, policy_from_fields
from kinetics_jax.policies.dense import Dense

BACKENDS = ("xla", "pallas")
DEFAULT_PAGE_SIZE = 16


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
    """Which KV tokens a decode step attends (`policy`) and how the engine runs it.

    policy: a `Policy` (kinetics_jax.policies: Dense, OracleTopK, BlockTopK, SlidingWindow); dense_layers:
    layer indices that stay dense at decode steps (prefill is always dense); backend: "xla" (pure JAX) or
    "pallas" (the kernels of pallas_kernels: Triton on GPU, Mosaic on TPU, interpret mode on CPU); page_size:
    tokens per KV cache page, a power of two (None: the policy's block size, else 16; `cache_page_size` is the
    size used); tile_tokens: KV tokens a kernel reads per loop iteration (a power of two >= 16; None: each
    kernel's default).

        AttentionConfig(BlockTopK(block_topk=4, block_size=16), backend="pallas")
    """

    policy: Policy = Dense()
    dense_layers: tuple[int, ...] = dataclasses.field(default=(0,), kw_only=True)
    backend: str = dataclasses.field(default="xla", kw_only=True)
    page_size: int | None = dataclasses.field(default=None, kw_only=True)
    tile_tokens: int | None = dataclasses.field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        def bad(field: str, why: str) -> ValueError:
            return ValueError(f"AttentionConfig.{field}: {why} (got {getattr(self, field)!r})")

        def store(field: str, value: object) -> None:
            object.__setattr__(self, field, value)

        if not isinstance(self.policy, Policy):
            raise bad("policy", "must be a kinetics_jax.policies policy, e.g. BlockTopK(block_topk=4) (labels go "
                                "through AttentionConfig.parse)")
        if self.backend not in BACKENDS:
            raise bad("backend", f"must be one of {BACKENDS}")
        if self.page_size is not None:
            store("page_size", checked_int(self.page_size, "AttentionConfig.page_size", minimum=1))
            if self.page_size & (self.page_size - 1):
                raise bad("page_size", "must be a power of two")
            if self.policy.page_size not in (None, self.page_size):
                raise bad("page_size", f"{type(self.policy).__name__} reads one cache page per block: it must be "
                                       f"None or the block size {self.policy.page_size}")
        store("dense_layers", tuple(checked_int(i, "AttentionConfig.dense_layers", minimum=0,
                                                why="distinct layer indices") for i in self.dense_layers))
        if len(set(self.dense_layers)) != len(self.dense_layers):
            raise bad("dense_layers", "must be distinct layer indices >= 0")
        if self.tile_tokens is not None:
            why = "a power of two >= 16, or None for the kernels' defaults"
            store("tile_tokens", checked_int(self.tile_tokens, "AttentionConfig.tile_tokens", minimum=16, why=why))
            if self.tile_tokens & (self.tile_tokens - 1):
                raise bad("tile_tokens", f"must be {why}")
        self.policy.check_backend(self.backend)

    @classmethod
    def parse(cls, label: str, **fields: Any) -> "AttentionConfig":
        """The config of a policy label (`kinetics_jax.policies.parse_policy`) and the other fields."""
        return cls(parse_policy(label), **fields)

    @property
    def cache_page_size(self) -> int:
        """Tokens per KV cache page: page_size, else the policy's block size, else 16."""
        return self.page_size or self.policy.page_size or DEFAULT_PAGE_SIZE

    @property
    def page_offset(self) -> int:
        """Empty slots before token 0 in a sequence's first cache page (block_topk: the sink fills whole pages)."""
        return self.policy.page_offset(self.cache_page_size)

    @property
    def summaries(self) -> tuple[str, ...]:
        """The per-page key summaries the cache keeps for the policy (KVCache fields)."""
        return self.policy.summaries

    def dense_layer_mask(self, num_layers: int) -> np.ndarray:
        """bool[num_layers]: the layers that read every cached token at decode steps."""
        if not self.policy.sparse:
            return np.ones(num_layers, bool)
        return np.isin(np.arange(num_layers), self.dense_layers)

    def check_layers(self, num_layers: int) -> None:
        """Raises if a dense layer index is outside a model of `num_layers` layers."""
        outside = [i for i in self.dense_layers if i >= num_layers]
        if outside:
            raise ValueError(f"AttentionConfig.dense_layers has layer {outside[0]} but the model has "
                             f"{num_layers} layers")

    def describe(self) -> str:
        """The policy label and how it runs, e.g. "block_topk-64 (pallas, dense_layers=0)"."""
        parts = [self.backend]
        if self.policy.sparse:
            parts.append("dense_layers=" + ",".join(map(str, self.dense_layers)) if self.dense_layers
                         else "no dense layers")
        if self.cache_page_size != (self.policy.page_size or DEFAULT_PAGE_SIZE):
            parts.append(f"page_size={self.cache_page_size}")
        if self.tile_tokens is not None:
            parts.append(f"tile={self.tile_tokens}")
        return f"{self.policy.label()} ({', '.join(parts)})"

    def to_fields(self) -> dict[str, Any]:
        """The JSON form records keep: the policy's fields (with its kind) and this config's."""
        return {**self.policy.to_fields(), "dense_layers": list(self.dense_layers), "backend": self.backend,
                "page_size": self.page_size, "tile_tokens": self.tile_tokens}

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> "AttentionConfig":
        """The config of `to_fields`' form. Records of older versions (every policy's fields flat, `block_size`
        the page size of every kind) are read too."""
        policy = policy_from_fields(fields)
        page_size = fields.get("page_size")
        if page_size is None and policy.page_size is None and fields.get("block_size") != DEFAULT_PAGE_SIZE:
            page_size = fields.get("block_size")  # an older record: block_size was every kind's page size
        config = {"dense_layers": tuple(fields.get("dense_layers", (0,))), "backend": fields.get("backend", "xla"),
                  "page_size": page_size, "tile_tokens": fields.get("tile_tokens")}
        return cls(policy, **config)
