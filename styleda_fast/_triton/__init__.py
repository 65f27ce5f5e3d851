"""Triton kernels, one module per operation family; imported on first use (importing triton is slow)."""
