"""Benchmarks for oncely: scripts that print measured figures (see bench/README.md)."""
