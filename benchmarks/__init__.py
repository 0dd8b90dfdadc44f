"""Benchmarks of swin-fused: pytest-benchmark cases, the GPU check script and its helpers."""
