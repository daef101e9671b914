"""Smoke tests of the benchmarks (bench/): every section present, numbers not checked."""
