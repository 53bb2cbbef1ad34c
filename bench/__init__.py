"""Benchmarks, run by hand: see bench/run.py."""
