"""Image files: PNGs that carry their generation parameters, grids, trajectory GIFs.

Every file is written whole (a temporary name in the same folder, then a rename), and carries its
parameters so that a later run can tell whether an existing file is the one it would make.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from .errors import InputError, OutputError

PNG_TEXT_KEY = "latent-onnx"  # PNG tEXt key holding the JSON generation parameters


def check_output_dir(directory: Path) -> None:
    """OutputError unless `directory` exists as a writable folder or can be created under one."""
    probe = directory
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"cannot write to {directory}: {probe} is not a folder")
    try:  # a real write: permission bits say nothing for root, or on read-only and virtual file systems
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError:
        raise OutputError(
            f"cannot write to {directory}: {probe} is not writable; choose another --out folder"
        ) from None


def write_atomically(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call write(temporary path next to `path`), then rename it to `path`: whatever stops it (a full disk, an
    interrupt) leaves neither a half-written `path` nor the temporary file; an OSError becomes an OutputError.
    The one way this project writes a file whole (the runtime's images and datasets, the exporter's files)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(handle)
    except OSError as error:
        raise OutputError(f"cannot write {path}: {error.strerror}") from None
    try:
        write(Path(temp_name))
        os.chmod(temp_name, 0o644)
        os.replace(temp_name, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        if isinstance(error, OSError):
            raise OutputError(f"cannot write {path}: {error.strerror or error}") from None
        raise


def png_bytes(image: Image.Image, text: dict[str, str]) -> bytes:
    """The PNG file of `image` with `text` as tEXt chunks (key -> value)."""
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def save_png(image: Image.Image, path: Path, text: dict[str, str]) -> None:
    """Write a PNG with `text` as tEXt chunks (key -> value)."""
    data = png_bytes(image, text)
    write_atomically(path, lambda temp: temp.write_bytes(data))


MAX_INPUT_PIXELS = 4096 * 4096  # larger input images are refused before they are decoded


def read_image(path: Path, what: str) -> tuple[Image.Image, str]:
    """(the decoded image, the sha256 of its file) for a user's image file; InputError when it cannot be used."""
    try:
        data = Path(path).expanduser().read_bytes()
    except OSError as error:
        raise InputError(f"cannot read {what} {path}: {error.strerror or error}") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # PIL's own bomb check: an error here
            with Image.open(io.BytesIO(data)) as probe:
                width, height = probe.size
                if width * height > MAX_INPUT_PIXELS:
                    raise InputError(
                        f"{what} {path} is {width}x{height} pixels; give an image of at most {MAX_INPUT_PIXELS} pixels"
                    )
                image = probe.convert("RGB")
    except InputError:
        raise
    except Exception as error:  # a hostile file makes PIL's decoders raise many kinds of error
        raise InputError(f"cannot read {what} {path}: {type(error).__name__}: {error}".splitlines()[0]) from None
    return image, hashlib.sha256(data).hexdigest()


RESAMPLES = {"nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}  # --resample


def upscaled(image: Image.Image, factor: int, resample: str = "nearest") -> Image.Image:
    """`image` scaled up by an integer factor with a RESAMPLES filter (itself when the factor is 1)."""
    if factor == 1:
        return image
    return image.resize((image.width * factor, image.height * factor), RESAMPLES[resample])


def stored_parameters(path: Path) -> dict | None:
    """The JSON parameters a file written here carries (PNG text chunk, GIF comment); None when it has none."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                text = (
                    image.text.get(PNG_TEXT_KEY) if image.format == "PNG" else image.info.get("comment", b"").decode()
                )
        value = json.loads(text) if text else None
    except Exception:  # not an image of ours: unreadable, damaged, other text
        return None
    return value if isinstance(value, dict) else None


def save_gif(frames: list[Image.Image], path: Path, frame_ms: int = 80, comment: str = "") -> None:
    """Write an animated GIF that loops, holding the last frame a second; `comment` goes in its comment block."""
    durations = [frame_ms] * (len(frames) - 1) + [1000]
    write_atomically(
        path,
        lambda temp: frames[0].save(
            temp, format="GIF", save_all=True, append_images=frames[1:], duration=durations, loop=0, comment=comment
        ),
    )


GUTTER_GREY = 128  # the grid's gutters: visible between images on black backgrounds


def make_grid(pixels: np.ndarray, columns: int | None = None, gap: int = 2, background: int = 0) -> Image.Image:
    """A grid image from uint8 [N, H, W, 3] images, `columns` wide (default: about square), with gutters `gap`
    pixels wide of grey level `background`."""
    count, height, width, _ = pixels.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    canvas = np.full((rows * (height + gap) - gap, columns * (width + gap) - gap, 3), background, dtype=np.uint8)
    for index, image in enumerate(pixels):
        top, left = (index // columns) * (height + gap), (index % columns) * (width + gap)
        canvas[top : top + height, left : left + width] = image
    return Image.fromarray(canvas)


def to_pixels(image: Image.Image, height: int, width: int) -> np.ndarray:
    """An image as uint8 [H, W, 3] RGB: converted, then resized (bicubic) when its size differs."""
    rgb = image.convert("RGB")
    if rgb.size != (width, height):
        rgb = rgb.resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(rgb, dtype=np.uint8)
