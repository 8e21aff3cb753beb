"""Offline demo: synthetic shape images with true answers, and a tiny random LLaVA."""

from vlmprobe.demo.data import build_tiny_llava, write_demo_parquet

__all__ = ["build_tiny_llava", "write_demo_parquet"]
