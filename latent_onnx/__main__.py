"""`latent-onnx` and `python -m latent_onnx`: the CLI, or one line saying what to install when ONNX Runtime is missing."""

from .errors import RuntimeMissingError, exit_with_error


def main(argv: list[str] | None = None) -> None:
    try:
        from .cli import main as cli_main
    except RuntimeMissingError as error:
        exit_with_error("latent-onnx", str(error), error.exit_code)
    cli_main(argv)


if __name__ == "__main__":
    main()
