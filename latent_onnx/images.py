"""Image files: PNGs that carry their generation parameters, grids, trajectory GIFs.

Every file is written whole (a temporary name in the same folder, then a rename) and never
replaces an existing file unless asked to.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import tempfile
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
        raise OutputError(f"cannot write to {directory}: {probe} is not writable; choose another --out folder") from None


def check_new_files(paths: list[Path], overwrite: bool) -> None:
    """OutputError when any path exists (and overwriting was not asked for) or is a folder."""
    for path in paths:
        if path.is_dir():
            raise OutputError(f"{path} is a folder; choose another --out folder")
        if path.exists() and not overwrite:
            raise OutputError(f"{path} already exists; pass --overwrite or choose another --out folder")


def _write_atomic(path: Path, write) -> None:
    """Call write(file object) on a temporary file next to `path`, then rename it to `path`."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise OutputError(f"cannot write {path}: {error.strerror}") from None
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
        os.chmod(temp_name, 0o644)
        os.replace(temp_name, path)
    except OSError as error:
        os.unlink(temp_name)
        raise OutputError(f"cannot write {path}: {error.strerror}") from None
    except BaseException:
        os.unlink(temp_name)
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
    _write_atomic(path, lambda stream: stream.write(data))


MAX_INPUT_PIXELS = 4096 * 4096  # larger input images are refused before they are decoded


def read_image(path: Path, what: str) -> tuple[Image.Image, str]:
    """(the decoded image, the sha256 of its file) for a user's image file; InputError when it cannot be used."""
    try:
        data = Path(path).expanduser().read_bytes()
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
            if width * height > MAX_INPUT_PIXELS:
                raise InputError(f"{what} {path} is {width}x{height} pixels; give an image of at most "
                                 f"{MAX_INPUT_PIXELS} pixels")
            image = probe.convert("RGB")
    except InputError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as error:
        raise InputError(f"cannot read {what} {path}: {error}") from None
    return image, hashlib.sha256(data).hexdigest()


def save_gif(frames: list[Image.Image], path: Path, frame_ms: int = 80) -> None:
    """Write an animated GIF that loops, holding the last frame a second."""
    durations = [frame_ms] * (len(frames) - 1) + [1000]
    _write_atomic(
        path,
        lambda stream: frames[0].save(
            stream, format="GIF", save_all=True, append_images=frames[1:], duration=durations, loop=0
        ),
    )


def make_grid(pixels: np.ndarray, columns: int | None = None, gap: int = 2) -> Image.Image:
    """A grid image from uint8 [N, H, W, 3] images, `columns` wide (default: about square)."""
    count, height, width, _ = pixels.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    canvas = np.zeros((rows * (height + gap) - gap, columns * (width + gap) - gap, 3), dtype=np.uint8)
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
