"""kinetics_jax.sharding on 8 CPU devices (conftest forces --xla_force_host_platform_device_count=8): the axis
rules, meshes and start-up flags, the data split, sharded logits and greedy generation against one device, KV-head
replicas, and orbax / HF restores straight into a mesh."""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import kinetics_jax as kj
from kinetics_jax.sharding import axes, meshes, placement, planning, runtime
from kinetics_jax.sampling import SamplingConfig

MESHES = [(8, 1), (4, 2), (2, 4), (1, 8)]
GREEDY = SamplingConfig.greedy_config()
# Head counts divisible by 8 so every mesh of MESHES is valid; GQA group 2; the MoE has 8 experts.
DENSE = kj.Qwen3Config(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=16, tie_word_embeddings=False,
                       max_position_embeddings=512)
MOE = kj.Qwen3Config(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=8, num_key_value_heads=8, head_dim=16, num_experts=8,
                     num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True,
                     max_position_embeddings=512)


def _model(config: kj.Qwen3Config, seed: int = 0) -> kj.Qwen3ForCausalLM:
    # A wider init than transformers' 0.02 so logits are far from uniform and greedy ties are implausible.
    model = kj.Qwen3ForCausalLM(config, rngs=nnx.Rngs(seed))
    state = nnx.state(model)
    keys = iter(jax.random.split(jax.random.key(seed + 1), len(nnx.to_flat_state(state))))
    nnx.update(model, jax.tree.map(lambda x: x + 0.2 * jax.random.normal(next(keys), x.shape), state))
    return model


def _mesh(shape):
    return meshes.make_mesh(shape)


def _prompts(lengths, seed=0, vocab=256):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, n).tolist() for n in lengths]


def test_eight_cpu_devices():
    assert jax.device_count() == 8, "conftest must force 8 host devices before jax is imported"


def test_rules_give_the_expected_partition_specs():
    mesh = _mesh((4, 2))
    abstract = nnx.eval_shape(lambda: kj.Qwen3ForCausalLM(MOE, rngs=nnx.Rngs(0)))
    specs = {".".join(map(str, path)): s.spec for path, s in placement.param_shardings(abstract, mesh).items()}
    assert specs["blocks.0.layer.self_attn.q_proj"] == P(None, "model", None, None)
    assert specs["blocks.0.layer.self_attn.k_proj"] == P(None, "model", None, None)
    assert specs["blocks.0.layer.self_attn.o_proj"] == P(None, "model", None, None)
    assert specs["blocks.0.layer.mlp.gate_proj"] == P(None, "model", None, None)  # experts take "model"
    assert specs["blocks.0.layer.mlp.router"] == P(None, None, "model")
    assert specs["lm_head"] == P(None, "model")
    assert specs["embed_tokens.embedding"] == P("model", None)
    dense = nnx.eval_shape(lambda: kj.Qwen3ForCausalLM(DENSE, rngs=nnx.Rngs(0)))
    dense_specs = {".".join(map(str, k)): s.spec for k, s in placement.param_shardings(dense, mesh).items()}
    assert dense_specs["blocks.0.layer.mlp.down_proj"] == P(None, "model", None)
    # The KV cache: KV heads over "model", pages over "data"; a dimension "model" does not divide is replicated.
    assert axes.partition_spec(axes.CACHE_POOL, mesh) == P(None, "model", "data", None, None)
    assert axes.partition_spec(("vocab", "embed"), _mesh((2, 4)), (150, 64)) == P(None, None)


def test_bad_meshes_and_flags_are_refused():
    with pytest.raises(ValueError, match="needs 6 devices, but there are 8"):
        meshes.make_mesh((3, 2))
    for text in ("4", "4,x", "0,8", "2,2,2"):
        with pytest.raises(ValueError, match="mesh shape"):
            meshes.parse_mesh_shape(text)
    model = kj.load_model("kinetics_jax/assets/tiny-random-qwen3", dtype=jnp.float32)  # 2 KV heads
    with pytest.raises(ValueError, match=r"'model' mesh axis \(8 devices\) must divide the query heads \(4\)"):
        kj.generate(model, [[1, 2, 3]], max_new_tokens=2, mesh=_mesh((1, 8)))
    with pytest.raises(ValueError, match="need --coordinator_address"):
        runtime.initialize(num_processes=2)
    with pytest.raises(ValueError, match="needs --num_processes and --process_id"):
        runtime.initialize("127.0.0.1:1234", num_processes=2)
    with pytest.raises(ValueError, match=r"process_id must be in \[0, 2\)"):
        runtime.initialize("127.0.0.1:1234", num_processes=2, process_id=2)


@pytest.mark.parametrize("prompts,samples,shards", list(itertools.product([1, 3, 4, 8, 12], [1, 2, 4, 8], [1, 2, 8])))
def test_data_split_covers_every_sample_once(prompts, samples, shards):
    split = planning.DataSplit.of(prompts, samples, shards)
    assert split.prompt_groups * split.sample_groups == shards
    seen = []
    for d in range(shards):
        prompt_rows, sample_rows = split.shard_rows(d)
        assert len(prompt_rows) == split.prompts_per_shard and len(sample_rows) == split.samples_per_shard
        seen += [(p, s) for p in prompt_rows for s in sample_rows if p < prompts]
    assert sorted(seen) == [(p, s) for p in range(prompts) for s in range(samples)]
    assert split.prompt_groups * split.prompts_per_shard - prompts < split.prompt_groups  # padding < one group


@pytest.mark.parametrize("config", [DENSE, MOE], ids=["dense", "moe"])
def test_sharded_logits_match_one_device(config):
    model = _model(config)
    ids = jnp.asarray(_prompts([24] * 8, seed=1))
    expected = np.asarray(model(ids))
    for shape in MESHES:
        mesh = _mesh(shape)
        sharded = kj.Qwen3ForCausalLM(config, rngs=nnx.Rngs(0))
        nnx.update(sharded, nnx.state(model))
        placement.shard_model(sharded, mesh)
        batch = placement.put(np.asarray(ids), (axes.BATCH, None), mesh)
        got = np.asarray(jax.jit(lambda m, x: m(x))(sharded, batch))
        # float32, 3 layers: only the order of the sums changes (all-reduces over "model"); the logits are O(10).
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4, err_msg=str(shape))


ATTENTION = {
    "dense": kj.AttentionConfig(),
    "block_topk-pallas": kj.AttentionConfig(kj.policies.BlockTopK(sink=4, block_size=16, block_topk=1), backend="pallas"),
}


@pytest.mark.parametrize("name,shapes", [("dense", MESHES), ("block_topk-pallas", [(8, 1), (2, 4)])])
def test_sharded_greedy_generate_gives_the_same_tokens(name, shapes):
    """3 prompts x 4 samples: (8, 1) pads the prompts to 4 and splits the samples; (2, 4) splits the heads."""
    model, attention = _model(DENSE), ATTENTION[name]
    prompts = _prompts([5, 23, 40], seed=2)
    kwargs = dict(num_samples=4, max_new_tokens=40, sampling=GREEDY, attention=attention)
    expected = kj.generate(model, prompts, **kwargs)
    if attention.policy.sparse:  # the policy really selects: more full blocks than block_topk late in the run
        assert expected.attended_tokens[-1, 1:].max() < expected.attended_tokens[-1, 0] / 2  # layer 0 is dense
    for shape in shapes:
        got = kj.generate(model, prompts, mesh=_mesh(shape), **kwargs)
        np.testing.assert_array_equal(got.tokens, expected.tokens, err_msg=str(shape))
        np.testing.assert_array_equal(got.lengths, expected.lengths)
        np.testing.assert_array_equal(got.attended_tokens, expected.attended_tokens)


GQA4 = kj.Qwen3Config(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=8, num_key_value_heads=2, head_dim=16, max_position_embeddings=512)


def test_kv_heads_replicated_when_model_axis_exceeds_them():
    """2 KV heads over 4 or 8 "model" devices: each device keeps the pages of the one KV head its query heads
    read, and block selection averages the query group across the devices sharing it (without that average the
    (1, 8) tokens differ)."""
    model = _model(GQA4)
    prompts = _prompts([5, 23, 40], seed=2)
    attention = kj.AttentionConfig(kj.policies.BlockTopK(sink=4, block_size=16, block_topk=1, score="quest"), backend="pallas")
    kwargs = dict(num_samples=4, max_new_tokens=40, sampling=GREEDY, attention=attention)
    expected = kj.generate(model, prompts, **kwargs)
    for shape in [(2, 4), (1, 8)]:
        mesh = _mesh(shape)
        assert meshes.kv_replicas(GQA4, mesh) == shape[1] // 2
        got = kj.generate(model, prompts, mesh=mesh, **kwargs)
        np.testing.assert_array_equal(got.tokens, expected.tokens, err_msg=str(shape))
        np.testing.assert_array_equal(got.attended_tokens, expected.attended_tokens)
    with pytest.raises(ValueError, match="oracle topk"):
        kj.generate(model, prompts, max_new_tokens=4, mesh=_mesh((1, 8)),
                    attention=kj.AttentionConfig(kj.policies.OracleTopK(topk=8)))
    with pytest.raises(ValueError, match=r"'model' mesh axis \(4 devices\).*KV heads \(6\)"):
        meshes.check_mesh(dataclasses.replace(GQA4, num_attention_heads=12, num_key_value_heads=6), _mesh((2, 4)))


def test_sampled_generate_on_a_mesh_matches_one_device_streams():
    """Sampling keys follow (seed, prompt stream, sample), not the device a row lands on."""
    model = _model(DENSE)
    prompts = _prompts([7, 12], seed=3)
    kwargs = dict(num_samples=4, max_new_tokens=12, sampling=SamplingConfig(temperature=1.0, top_p=1.0, top_k=0),
                  seed=5, stream_ids=[10, 11])
    expected = kj.generate(model, prompts, **kwargs)
    got = kj.generate(model, prompts, mesh=_mesh((8, 1)), **kwargs)
    np.testing.assert_array_equal(got.tokens, expected.tokens)


@pytest.mark.parametrize("fmt", ["orbax", "hf"])
def test_restore_into_a_mesh(fmt, hf_checkpoints, tmp_path):
    src = hf_checkpoints["moe_mixed_sharded"]  # 8 query / 2 KV heads, dense and MoE layers, sharded safetensors
    path = src
    if fmt == "orbax":
        path = tmp_path / "ckpt"
        kj.convert_hf_checkpoint(src, path)
    reference = kj.load_model(str(path), dtype=jnp.float32)
    mesh = _mesh((4, 2))
    model = kj.load_model(str(path), dtype=jnp.float32, mesh=mesh)
    want = placement.param_shardings(model, mesh)
    for (key, var), (_, ref) in zip(nnx.to_flat_state(nnx.state(model)), nnx.to_flat_state(nnx.state(reference))):
        value = var.get_value()
        assert value.sharding.is_equivalent_to(want[key], value.ndim), key
        assert value.sharding.mesh == mesh
        np.testing.assert_array_equal(np.asarray(value), np.asarray(ref.get_value()), err_msg=str(key))
    # Parameters are really split: each device holds half the query heads.
    q = model.blocks[0].layer.self_attn.q_proj[...]  # [layers, heads, head_dim, embed]
    assert q.addressable_shards[0].data.shape[1] == q.shape[1] // 2
