"""Measuring the trainer: the benchmark against the usual DataLoader loop, and `make gpu-check`."""
