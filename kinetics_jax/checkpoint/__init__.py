"""Checkpoints: Hugging Face safetensors in, the project's orbax format out, and loading either."""

from kinetics_jax.checkpoint.hf import CheckpointError, HFCheckpoint, load_hf_checkpoint
from kinetics_jax.checkpoint.orbax_io import convert_hf_checkpoint, load_checkpoint, load_model, save_checkpoint

__all__ = ["CheckpointError", "HFCheckpoint", "convert_hf_checkpoint", "load_checkpoint", "load_hf_checkpoint",
           "load_model", "save_checkpoint"]
