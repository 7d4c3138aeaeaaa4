"""Helpers shared by the benchmark entry scripts: data preparation, loaders (including the original project's),
timing, the training step, breakdowns, report writing, and the MIMIC-sized JPEG decode comparison."""
