"""Tools beside the library: `python -m benchmarks.bench` times the trainer (docs/benchmarks.md)."""
