"""Decode-attention policies. `AttentionConfig` names which KV tokens each decode step attends.

Only "dense" exists so far: every cached token of the sequence. The sparse Kinetics policies (top-k, block top-k,
sliding window) and the Pallas backends are added here with their selection semantics.
"""

from __future__ import annotations

import dataclasses

KINDS = ("dense",)
BACKENDS = ("xla",)


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
    """kind: which tokens a decode step reads; backend: "xla" (the pure-JAX reference)."""

    kind: str = "dense"
    backend: str = "xla"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"AttentionConfig.kind must be one of {KINDS}, got {self.kind!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"AttentionConfig.backend must be one of {BACKENDS}, got {self.backend!r}")
