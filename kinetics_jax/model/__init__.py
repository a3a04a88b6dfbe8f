"""Flax NNX modules of Qwen3 and Qwen3-MoE."""

from kinetics_jax.model.qwen3 import DecoderLayer, LayerStack, Qwen3ForCausalLM

__all__ = ["DecoderLayer", "LayerStack", "Qwen3ForCausalLM"]
