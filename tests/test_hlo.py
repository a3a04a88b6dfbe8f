"""The compiled-HLO reader (kinetics_jax.cost.hlo) on hand-written modules: it lists the new HBM arrays of watched
shapes, and not views, in-place updates, kernels, values inside fusions, or arrays staged into VMEM."""

from __future__ import annotations

from kinetics_jax.cost import hlo

MODULE = """HloModule step

%fused_slice (p: bf16[36,4096,1024]) -> bf16[1,4096,1024] {
  %p = bf16[36,4096,1024]{2,1,0} parameter(0)
  ROOT %slice.1 = bf16[1,4096,1024]{2,1,0} slice(%p), slice={[0:1], [0:4096], [0:1024]}
}

%fused_update (p: bf16[36,8,100,16,128], u: bf16[1,8,1,1,128]) -> bf16[36,8,100,16,128] {
  %p.1 = bf16[36,8,100,16,128]{4,3,2,1,0} parameter(0)
  %u.1 = bf16[1,8,1,1,128]{4,3,2,1,0} parameter(1)
  %c = s32[] constant(0)
  ROOT %dus = bf16[36,8,100,16,128]{4,3,2,1,0} dynamic-update-slice(%p.1, %u.1, %c, %c, %c, %c, %c)
}

ENTRY %main (w: bf16[36,4096,1024], pool: bf16[36,8,100,16,128], u: bf16[1,8,1,1,128]) -> bf16[36,8,100,16,128] {
  %w = bf16[36,4096,1024]{2,1,0:T(8,128)(2,1)} parameter(0)
  %pool = bf16[36,8,100,16,128]{4,3,2,1,0} parameter(1)
  %u = bf16[1,8,1,1,128]{4,3,2,1,0} parameter(2)
  %copy.1 = bf16[36,8,100,16,128]{4,1,3,2,0:T(8,128)(2,1)} copy(%pool)
  %staged = bf16[1,4096,1024]{2,1,0:T(8,128)(2,1)S(1)} copy(%w)
  %layer = bf16[1,4096,1024]{2,1,0:T(8,128)(2,1)} fusion(%w), kind=kLoop, calls=%fused_slice
  %small = bf16[8,128]{1,0} copy(%u)
  %update = bf16[36,8,100,16,128]{4,3,2,1,0} fusion(%pool, %u), kind=kLoop, calls=%fused_update
  %kernel = bf16[36,8,100,16,128]{4,3,2,1,0} custom-call(%update), custom_call_target="tpu_custom_call"
  ROOT %view = bf16[36,8,100,16,128]{4,3,2,1,0} bitcast(%kernel)
}
"""


def test_lists_copies_and_layer_slices_of_watched_arrays_only():
    found = hlo.materialized(MODULE, [(36, 8, 100, 16, 128), (36, 4096, 1024)])
    assert [(m.name, m.op) for m in found] == [("copy.1", "copy"), ("layer", "fusion")]
    assert found[0].bytes == 36 * 8 * 100 * 16 * 128 * 2
    assert "MiB" in str(found[0])


def test_small_or_unwatched_arrays_are_not_listed():
    assert hlo.materialized(MODULE, [(8, 128)]) == []  # under the 1 MiB floor
    assert hlo.materialized(MODULE, [(8, 128)], min_bytes=0)[0].name == "small"
    assert hlo.materialized(MODULE, [(7, 7)]) == []
