"""Pallas kernels (GPU Triton and TPU Mosaic) used by kinetics_jax. One folder per op; never imports kinetics_jax."""
