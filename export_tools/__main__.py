"""`python -m export_tools`: the latent-onnx-export command."""

from export_tools.cli import main

if __name__ == "__main__":
    main()
