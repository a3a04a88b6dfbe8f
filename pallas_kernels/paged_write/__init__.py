"""In-place writes into the paged cache: tokens (decode) and whole pages (prefill) of a head-major page pool,
and rows of a page-major summary array.

Modules: reference (XLA scatters: the spec, and the implementation off TPU), mosaic_tpu (aliased DMA kernels),
ops (public functions, implementation choice).
"""

from pallas_kernels.paged_write.ops import IMPLEMENTATIONS, write_pages, write_rows, write_tokens

__all__ = ["IMPLEMENTATIONS", "write_pages", "write_rows", "write_tokens"]
