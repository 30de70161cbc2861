"""The benchmarks (make bench): figures beside the peer tools, never asserted. Run them from the
repository's top as modules: python -m bench.bench_start."""
