"""Benchmark harness shared by `mtl-ops bench` and the pytest-benchmark suites in benchmarks/."""
from .cases import CASES, BenchCase, Provider, providers_for
from .memory import peak_memory_bytes
from .runner import run_benchmarks, format_table

__all__ = ["CASES", "BenchCase", "Provider", "providers_for", "peak_memory_bytes", "run_benchmarks", "format_table"]
