"""Benchmark suite of issue 7: replicator against Litestream (run `./dev bench --help`)."""
