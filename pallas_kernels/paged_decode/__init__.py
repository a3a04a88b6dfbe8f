"""Page-list flash decode: one generic kernel for block-sparse, dense split-K and shared-prefix cascade decode.

Every row of q[r, h] attends the same token list: slots [lo, hi) of pages pages[r, h, :count[r, h]] of one
layer of a head-major page pool. Modules: reference (jnp spec), triton (GPU kernel), mosaic_tpu (TPU
kernel), ops (public functions, implementation choice).
"""

from pallas_kernels.paged_decode.ops import merge_partials, paged_decode, paged_decode_partials

__all__ = ["merge_partials", "paged_decode", "paged_decode_partials"]
