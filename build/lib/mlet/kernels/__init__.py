"""Kernels and memory for the hot spots of a step: Triton kernels (GPU) and huge-page tables (CPU)."""
