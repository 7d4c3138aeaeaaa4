"""Benchmarks: entry scripts run as modules from the repository root (`python -m benchmarks.throughput`,
`benchmarks.scale`, `benchmarks.gpu_rows`, `benchmarks.ema`, `benchmarks.folder_check`); their shared helpers live in
`benchmarks.common`. Results go under `benchmarks/results/` (see benchmarks/README.md)."""
