"""The resumable, digest-checked download, against a local HTTP server serving files the tests make."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from export_tools import ExportError
from export_tools.cli import main as export_main
from export_tools.convert.download import download, download_published

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB, so a download takes several chunks of the server's writes


class _Server:
    """Serves `files` {path: bytes} on 127.0.0.1 with Range support; `cut_after` ends responses early."""

    def __init__(self, files: dict[str, bytes], cut_after: int | None = None) -> None:
        self.files, self.cut_after, self.ranges = files, cut_after, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                header = self.headers.get("Range")
                server.ranges.append(header)
                if header:
                    start = int(header.removeprefix("bytes=").rstrip("-"))
                    if start >= len(body):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                rest = body[start:]
                if server.cut_after is not None:
                    rest = rest[: server.cut_after]
                self.wfile.write(rest)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _sha256(data: bytes) -> dict[str, str]:
    return {"sha256": hashlib.sha256(data).hexdigest()}


def test_download_checks_digest_and_renames(tmp_path):
    with _Server({"/w.bin": PAYLOAD}) as server:
        path = download(f"{server.url}/w.bin", "w.bin", tmp_path, _sha256(PAYLOAD), show_progress=False)
        assert path == tmp_path / "w.bin" and path.read_bytes() == PAYLOAD
        assert not (tmp_path / "w.bin.part").exists()
        download(f"{server.url}/w.bin", "w.bin", tmp_path, _sha256(PAYLOAD), show_progress=False)
        assert len(server.ranges) == 1  # a verified copy is not fetched again


def test_download_resumes_a_partial_file_with_a_range_request(tmp_path):
    (tmp_path / "w.bin.part").write_bytes(PAYLOAD[:300_000])
    with _Server({"/w.bin": PAYLOAD}) as server:
        path = download(f"{server.url}/w.bin", "w.bin", tmp_path, _sha256(PAYLOAD), show_progress=False)
    assert server.ranges == ["bytes=300000-"]
    assert path.read_bytes() == PAYLOAD


def test_download_cut_short_keeps_the_part_file_and_resumes(tmp_path):
    with _Server({"/w.bin": PAYLOAD}, cut_after=400_000) as server:
        with pytest.raises(ExportError, match="stopped at 400000 of 1048576 bytes: run the command again"):
            download(f"{server.url}/w.bin", "w.bin", tmp_path, _sha256(PAYLOAD), show_progress=False)
        assert (tmp_path / "w.bin.part").stat().st_size == 400_000 and not (tmp_path / "w.bin").exists()
        server.cut_after = None
        path = download(f"{server.url}/w.bin", "w.bin", tmp_path, _sha256(PAYLOAD), show_progress=False)
    assert server.ranges[-1] == "bytes=400000-" and path.read_bytes() == PAYLOAD


def test_download_of_a_corrupted_file_is_refused_and_deleted(tmp_path):
    corrupted = bytearray(PAYLOAD)
    corrupted[1234] ^= 0xFF
    with (
        _Server({"/w.bin": bytes(corrupted)}) as server,
        pytest.raises(ExportError, match="sha256 .* expected .*corrupt"),
    ):
        download(f"{server.url}/w.bin", "w.bin", tmp_path, _sha256(PAYLOAD), show_progress=False)
    assert list(tmp_path.iterdir()) == []


def test_download_without_a_digest_or_with_a_bad_url_is_refused(tmp_path):
    with pytest.raises(ExportError, match="no published digest: pass the sha256"):
        download("http://127.0.0.1:9/x", "x", tmp_path, {}, show_progress=False)
    with pytest.raises(ExportError, match="no published digest"):
        download_published("deepsim-fc6", tmp_path, show_progress=False)
    with pytest.raises(ExportError, match="64 hex digits"):
        download_published("deepsim-fc6", tmp_path, sha256="abc", show_progress=False)
    with _Server({}) as server, pytest.raises(ExportError, match="HTTP 404"):
        download(f"{server.url}/missing", "m", tmp_path, _sha256(b""), show_progress=False)


def test_download_command_lists_files_and_checks_pins(capsys):
    with pytest.raises(SystemExit) as exit_info:
        export_main(["imagenet", "download", "--list"])
    assert exit_info.value.code == 0
    listing = capsys.readouterr().out
    assert "deepsim-fc6" in listing and "research use only" in listing
    with pytest.raises(SystemExit) as exit_info:
        export_main(["imagenet", "download", "lrcn", "--sha256", "nonsense"])
    assert exit_info.value.code == 6 and "must look like FILE=HEX" in capsys.readouterr().err
