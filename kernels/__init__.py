"""Triton kernels of swin-fused (installed as swin_fused.kernels): jit kernels and their launchers."""
