"""User-facing errors: each carries a one-line message that says what is wrong and what to do."""

import sys
import unicodedata
from typing import NoReturn


class LatentOnnxError(Exception):
    """Base of every error the runtime raises on bad input; the CLI prints it as one line."""

    exit_code = 2


class BundleError(LatentOnnxError):
    """A bundle is missing, malformed, corrupted or tampered with."""

    exit_code = 3


class InputError(LatentOnnxError):
    """A class name, caption, number or path given by the user is not usable."""

    exit_code = 2


class DeviceError(LatentOnnxError):
    """The requested execution device is not available."""

    exit_code = 4


class RuntimeMissingError(DeviceError, ImportError):
    """ONNX Runtime is not installed (the base install has none: the cpu or gpu extra brings it)."""


class OutputError(LatentOnnxError):
    """An output file cannot be written (or would overwrite an existing file)."""

    exit_code = 5


class SamplingError(LatentOnnxError):
    """The chains diverged (non-finite codes, gradients or log-probabilities); nothing is written."""

    exit_code = 7


def printable(text) -> str:
    """`text` safe to print on a terminal: control and format characters (escape codes, bidi overrides,
    line breaks) shown as Python escapes. Rich markup is never interpreted: consoles print with markup off."""
    return "".join(
        char if unicodedata.category(char) not in ("Cc", "Cf", "Zl", "Zp") else ascii(char)[1:-1] for char in str(text)
    )


def command_line(prog: str, level: str, message) -> str:
    """`PROG: LEVEL: MESSAGE` as one printable line: how every command reports an error or a warning."""
    return f"{prog}: {level}: {printable(' '.join(str(message).split()))}"


def exit_with_error(prog: str, message: str, code: int) -> NoReturn:
    """Print `PROG: error: MESSAGE` as one printable line on stderr and exit with `code`: the one error printer
    of every command (it needs neither click nor ONNX Runtime, so it works when the runtime is missing)."""
    print(command_line(prog, "error", message), file=sys.stderr, flush=True)
    sys.exit(code)
