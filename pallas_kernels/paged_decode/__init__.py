"""Page-list flash decode: one generic kernel for block-sparse, dense split-K and shared-prefix cascade decode.

Every row of q[r, h] attends the same token list: the slots in a token window of entries start .. end - 1 of a
list of pages of one layer of a head-major page pool (`PageList`). Modules: reference (jnp spec), xla (XLA
implementation whose work follows the entries read), triton (GPU kernel), mosaic_tpu (TPU kernel), ops (public
functions, implementation choice).
"""

from pallas_kernels.paged_decode.ops import IMPLEMENTATIONS, merge_partials, paged_decode, paged_decode_partials
from pallas_kernels.paged_decode.reference import PageList

__all__ = ["IMPLEMENTATIONS", "PageList", "merge_partials", "paged_decode", "paged_decode_partials"]
