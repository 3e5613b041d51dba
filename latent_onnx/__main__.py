"""`latent-onnx` and `python -m latent_onnx`: the CLI, or one line saying what to install when ONNX Runtime is missing."""

import sys

from .errors import RuntimeMissingError


def main(argv: list[str] | None = None) -> None:
    try:
        from .cli import main as cli_main
    except RuntimeMissingError as error:
        print(f"latent-onnx: error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    cli_main(argv)


if __name__ == "__main__":
    main()
