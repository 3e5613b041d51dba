"""`python -m latent_onnx` runs the `latent-onnx` command."""

from .cli import main

main()
