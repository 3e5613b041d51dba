"""Fetch the published ImageNet weights into a cache folder: pinned digests, resumable, with progress.

A download goes to `<cache>/<name>.part`, resumes from the bytes already there with an HTTP
Range request, is checked against its pinned digest(s) and only then renamed to `<cache>/<name>`.
A file whose digest is wrong is deleted; a download cut short keeps its `.part` for the next run.

Digests are pinned only where a public source states them (BVLC's model zoo publishes the SHA-1
of bvlc_reference_caffenet.caffemodel). The other files have no published digest: for those the
user passes the sha256 they trust (`--sha256`), and nothing is invented here.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from export_tools import ExportError

CHUNK = 1 << 20  # bytes read per network call
TIMEOUT_S = 60.0  # seconds a stalled connection is waited for


@dataclass(frozen=True)
class PublishedFile:
    """One file the ImageNet bundle can be built from."""

    name: str  # file name in the cache folder
    url: str  # where its publisher serves it
    role: str  # what it is for, shown by `imagenet download --list`
    license: str  # the licence it is published under
    digests: dict[str, str] = field(default_factory=dict)  # hashlib name -> hex digest stated by a public source


REGISTRY: dict[str, PublishedFile] = {
    "caffenet": PublishedFile(
        name="bvlc_reference_caffenet.caffemodel",
        url="http://dl.caffe.berkeleyvision.org/bvlc_reference_caffenet.caffemodel",
        role="classifier and encoder (CaffeNet), Caffe format",
        license="BVLC model zoo: unrestricted use",
        digests={"sha1": "4c8d77deb20ea792f84eb5e6d0a11ca0a8660a46"},  # BVLC models/bvlc_reference_caffenet/readme.md
    ),
    "deepsim-fc6": PublishedFile(
        name="generator.caffemodel",
        url="http://www.cs.uwyo.edu/~anguyen8/share/generator.caffemodel",
        role="generator (DeePSiM fc6, as used by PPGN), Caffe format",
        license="DeePSiM models: research use only (Dosovitskiy & Brox, University of Freiburg)",
    ),  # no published digest: pass --sha256
    "lrcn": PublishedFile(
        name="lrcn_caffenet_iter_110000.caffemodel",
        url="http://www.cs.uwyo.edu/~anguyen8/share/lrcn_caffenet_iter_110000.caffemodel",
        role="captioner (LRCN, with its own CaffeNet), Caffe format",
        license="LRCN (Donahue et al.): see the LRCN / Caffe release terms",
    ),  # no published digest: pass --sha256
    "lrcn-vocabulary": PublishedFile(
        name="vocabulary.txt",
        url="https://raw.githubusercontent.com/Evolving-AI-Lab/ppgn/master/misc/vocabulary.txt",
        role="LRCN vocabulary (8800 words), text",
        license="Evolving-AI-Lab/ppgn repository licence",
    ),  # no published digest: pass --sha256
}


def file_digests(path: Path, algorithms: list[str]) -> dict[str, str]:
    """{hashlib name: hex digest} of the file at `path`."""
    hashers = {name: hashlib.new(name) for name in algorithms}
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            for hasher in hashers.values():
                hasher.update(chunk)
    return {name: hasher.hexdigest() for name, hasher in hashers.items()}


def _mismatch(path: Path, expected: dict[str, str]) -> str | None:
    """The first "algorithm actual != expected" text, or None when every pinned digest matches."""
    actual = file_digests(path, sorted(expected))
    for name, digest in sorted(expected.items()):
        if actual[name] != digest.lower():
            return f"{name} {actual[name]}, expected {digest.lower()}"
    return None


def _open(url: str, start: int):
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as error:
        if error.code == 416 and start:  # nothing left past `start`: the .part is complete
            return None
        raise ExportError(f"download of {url} failed: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ExportError(
            f"cannot reach {url} ({reason}): check the network, or download it by hand into the cache folder"
        ) from None


def _fetch(url: str, part: Path, label: str, show_progress: bool) -> None:
    """Append the rest of `url` to `part` (restarting it when the server ignores the Range request)."""
    start = part.stat().st_size if part.exists() else 0
    response = _open(url, start)
    if response is None:
        return
    with response:
        resumed = start and response.status == 206
        if not resumed:
            start = 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        received = start
        with (
            part.open("ab" if resumed else "wb") as out,
            Progress(
                TextColumn(label),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                disable=not show_progress,
            ) as progress,
        ):
            task = progress.add_task(label, total=total, completed=start)
            try:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    received += len(chunk)
                    progress.update(task, completed=received)
            except (OSError, http.client.HTTPException) as error:
                raise ExportError(
                    f"download of {url} stopped at {received} bytes ({error}): run the command again to resume"
                ) from None
    if total is not None and received < total:
        raise ExportError(f"download of {url} stopped at {received} of {total} bytes: run the command again to resume")


def download(url: str, name: str, cache_dir: str | Path, digests: dict[str, str], show_progress: bool = True) -> Path:
    """Download `url` to `<cache_dir>/<name>` unless a file there already matches `digests`; return its path.

    `digests` maps hashlib names ("sha256", "sha1") to expected hex digests and must not be empty.
    """
    if not digests:
        raise ExportError(f"{name} has no published digest: pass the sha256 you trust with --sha256")
    cache = Path(cache_dir).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    final, part = cache / name, cache / f"{name}.part"
    if final.exists():
        if _mismatch(final, digests) is None:
            return final
        final.rename(part)  # a damaged copy: check it again after trying to complete it
    _fetch(url, part, name, show_progress)
    problem = _mismatch(part, digests)
    if problem:
        part.unlink()
        raise ExportError(
            f"downloaded {name} has {problem}: the file is corrupt or changed upstream; it was deleted, run again"
        )
    os.replace(part, final)
    return final


def download_published(key: str, cache_dir: str | Path, sha256: str | None = None, show_progress: bool = True) -> Path:
    """Download the registry entry `key` (see REGISTRY); `sha256` adds (or replaces) the pinned sha256."""
    if key not in REGISTRY:
        raise ExportError(f"unknown file '{key}': choose one of {', '.join(REGISTRY)}")
    entry = REGISTRY[key]
    digests = dict(entry.digests)
    if sha256:
        if not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
            raise ExportError(f"--sha256 must be 64 hex digits, got '{sha256}'")
        digests["sha256"] = sha256.lower()
    return download(entry.url, entry.name, cache_dir, digests, show_progress)
