"""Benchmarks of latent-onnx: `python -m bench --help`."""
