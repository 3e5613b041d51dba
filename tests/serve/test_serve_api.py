"""The JSON API of `latent-onnx serve`, over HTTP against a real server process on a loopback port."""

from __future__ import annotations

import base64
import io
import json
import shlex
import subprocess
import sys
import time
from dataclasses import fields

import httpx
import pytest
from PIL import Image

from bench.serve import ServerProcess
from latent_onnx import Pipeline, SamplerConfig
from latent_onnx.images import PNG_TEXT_KEY

FLAGGED_SAMPLER_FIELDS = [f.name for f in fields(SamplerConfig) if f.metadata["flag"] is not None]


def cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "latent_onnx", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def png_of(image: dict) -> bytes:
    return base64.b64decode(image["png"])


def test_health_and_bundles_describe_the_served_bundle(client, tiny_bundle):
    assert client.get("/v1/health").json()["bundles"] == ["tiny"]
    listing = client.get("/v1/bundles").json()
    (bundle,) = listing["bundles"]
    pipe = Pipeline.from_bundle(tiny_bundle, device="cpu")
    assert bundle["name"] == "tiny" and bundle["default"] and bundle["captions"]
    assert bundle["classes"] == len(pipe.bundle.classes)
    assert bundle["sampler"] == pipe.sampler_config().to_dict()
    assert bundle["sampler_by_condition"] == {
        kind: pipe.sampler_config(condition=kind).to_dict() for kind in ("class", "caption")
    }
    assert [s["name"] for s in listing["sampler_settings"]] == FLAGGED_SAMPLER_FIELDS
    classes = client.get("/v1/bundles/tiny/classes").json()["classes"]
    assert [c["names"] for c in classes] == pipe.bundle.classes
    words = client.get("/v1/bundles/tiny/vocabulary").json()["words"]
    assert words == [w for w in pipe.bundle.vocabulary if w != "<eos>"]


def test_openapi_documents_every_request_field(client):
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/generate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "caption" in body["properties"] and "steps" in body["properties"]
    assert set(body["properties"]) == {
        "bundle",
        "classes",
        "caption",
        "then",
        "switch_at",
        "n",
        "seed",
        "start_index",
        "batch_size",
        "preset",
        "path",
        *FLAGGED_SAMPLER_FIELDS,
    }
    assert body["properties"]["method"]["anyOf"][0]["enum"] == ["sgld", "mala"]


def test_pngs_are_the_files_the_cli_writes(client, tiny_bundle, tmp_path):
    settings = [
        "--class",
        "sandal:0.7,sneaker:0.3",
        "-n",
        "3",
        "--seed",
        "5",
        "--steps",
        "9",
        "--sampler",
        "mala",
        "--eps1",
        "0.02",
        "--batch-size",
        "2",
    ]
    done = cli("generate", "--bundle", str(tiny_bundle), *settings, "--out", str(tmp_path), "--device", "cpu")
    assert done.returncode == 0, done.stderr
    files = sorted(tmp_path.glob("*.png"))
    assert len(files) == 3
    body = {
        "classes": "sandal:0.7,sneaker:0.3",
        "n": 3,
        "seed": 5,
        "steps": 9,
        "method": "mala",
        "eps1": 0.02,
        "batch_size": 2,
    }
    answer = client.post("/v1/generate", json=body)
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert [png_of(image) for image in result["images"]] == [file.read_bytes() for file in files]
    assert result["seed"] == 5 and result["sampler"]["method"] == "mala" and result["sampler"]["steps"] == 9
    for image in result["images"]:
        with Image.open(io.BytesIO(png_of(image))) as png:
            text = png.text
        parameters = json.loads(text[PNG_TEXT_KEY])
        assert image["command"] == text["Comment"]
        assert (image["index"], image["seed"]) == (parameters["index"], 5)
        assert image["logp"] == pytest.approx(parameters["logp"]) and 0 <= image["acceptance"] <= 1
        assert parameters["sampler"] == result["sampler"]
    alone = client.post("/v1/generate", json={**body, "n": 1, "start_index": 2}, headers={"Accept": "image/png"})
    assert alone.headers["content-type"] == "image/png"
    assert alone.content == files[2].read_bytes()  # one sample regenerated alone is the same file


def test_a_pngs_command_remakes_it(client, tmp_path):
    image = client.post("/v1/generate", json={"caption": "a red sneaker", "seed": 3, "steps": 6}).json()["images"][0]
    command = shlex.split(image["command"])
    assert command[:2] == ["latent-onnx", "generate"]
    done = subprocess.run(
        [sys.executable, "-m", "latent_onnx", *command[1:], "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    (file,) = tmp_path.glob("*.png")
    assert file.read_bytes() == png_of(image)


@pytest.mark.parametrize(
    "args, body",
    [
        (["--class", "snekaer"], {"classes": "snekaer"}),
        (["--caption", "a green sneaker"], {"caption": "a green sneaker"}),
        (["--class", "sneaker", "--eps1", "-1"], {"classes": "sneaker", "eps1": -1.0}),
        (["--class", "sneaker", "--switch-at", "3"], {"classes": "sneaker", "switch_at": 3}),
        (["--class", "sneaker", "--preset", "fast"], {"classes": "sneaker", "preset": "fast"}),
    ],
)
def test_bad_values_get_the_clis_one_line_message(client, tiny_bundle, tmp_path, args, body):
    done = cli("generate", "--bundle", str(tiny_bundle), *args, "--out", str(tmp_path))
    assert done.returncode == 2
    answer = client.post("/v1/generate", json=body)
    assert answer.status_code == 422
    line = done.stderr.strip()  # the CLI may add what became of the files (nothing is written)
    assert "\n" not in line and line.startswith(f"latent-onnx: error: {answer.json()['error']}")


@pytest.mark.parametrize(
    "content, headers, status, says",
    [
        (b'{"classes": "sneaker",', {}, 400, "not valid JSON"),
        (b'{"classes": NaN}', {}, 400, "not valid JSON"),
        (b'["sneaker"]', {}, 400, "JSON object"),
        (b'{"classes": "sneaker", "stepz": 3}', {}, 422, "unknown option 'stepz'"),
        (b'{"classes": ["sneaker"]}', {}, 422, "classes must be a string"),
        (b'{"classes": "sneaker", "n": 1.5}', {}, 422, "n must be an integer"),
        (b'{"classes": "sneaker", "n": 9}', {}, 422, "n must be at most 8 on this server"),
        (b'{"classes": "sneaker", "steps": 2001}', {}, 422, "steps must be at most 2000"),
        (b'{"classes": "sneaker", "batch_size": 65}', {}, 422, "batch_size must be at most 64"),
        (b'{"classes": "sneaker", "bundle": "imagenet"}', {}, 422, "unknown bundle 'imagenet'"),
        (b'{"classes": "sneaker", "init_image": "/etc/passwd"}', {}, 422, "unknown option 'init_image'"),
        (b'{"classes": "sneaker", "method": "euler"}', {}, 422, "sampler must be one of sgld, mala"),
        (b'{"classes": "' + b"x" * 70000 + b'"}', {}, 413, "larger than this server's limit"),
        (b'{"classes": "sneaker"}', {"Content-Type": "text/plain"}, 415, "Content-Type: application/json"),
    ],
)
def test_bad_requests_get_one_line_json_errors(client, content, headers, status, says):
    answer = client.post("/v1/generate", content=content, headers={"Content-Type": "application/json", **headers})
    assert answer.status_code == status
    error = answer.json()["error"]
    assert says in error and "\n" not in error and "Traceback" not in error


def test_unknown_paths_and_bundles_are_json_404s(client):
    for path in ("/v1/nothing", "/v1/bundles/imagenet/classes", "/static/../../pyproject.toml"):
        answer = client.get(path)
        assert answer.status_code == 404 and "error" in answer.json(), path


def test_other_host_names_are_refused(client):
    answer = client.get("/v1/bundles", headers={"Host": "attacker.example"})
    assert answer.status_code == 421 and "host names" in answer.json()["error"]


def test_no_cors_unless_enabled(client):
    preflight = {"Origin": "http://app.example", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in client.options("/v1/generate", headers=preflight).headers
    assert (
        "access-control-allow-origin" not in client.get("/v1/bundles", headers={"Origin": "http://app.example"}).headers
    )


def test_token_and_cors_origin(tiny_bundle):
    with (
        ServerProcess(tiny_bundle, "--token", "s3cret", "--cors-origin", "http://app.example") as server,
        httpx.Client(base_url=server.url, timeout=60) as http,
    ):
        assert http.get("/v1/health").status_code == 200  # open, so that clients can wait for the server
        refused = http.get("/v1/bundles")
        assert refused.status_code == 401 and "Bearer" in refused.json()["error"]
        assert http.get("/v1/bundles", headers={"Authorization": "Bearer wrong"}).status_code == 401
        auth = {"Authorization": "Bearer s3cret"}
        assert http.post("/v1/generate", json={"classes": "sneaker"}).status_code == 401
        assert http.post("/v1/generate", json={"classes": "sneaker", "steps": 2}, headers=auth).status_code == 200
        preflight = http.options(
            "/v1/generate",
            headers={
                "Origin": "http://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        assert preflight.headers["access-control-allow-origin"] == "http://app.example"
        other = http.options(
            "/v1/generate", headers={"Origin": "http://other.example", "Access-Control-Request-Method": "POST"}
        )
        assert other.headers.get("access-control-allow-origin") != "http://other.example"


def events(lines) -> list[tuple[str, dict]]:
    """(event, data) pairs of a server-sent event stream, in order."""
    out, name = [], None
    for line in lines:
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            out.append((name, json.loads(line[len("data: ") :])))
    return out


def test_stream_reports_steps_and_previews_then_the_result(client):
    body = {"classes": "sneaker", "n": 3, "batch_size": 2, "seed": 8, "steps": 10}
    with client.stream("POST", "/v1/generate/stream", json=body, params={"preview_every": 5}) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        got = events(stream.iter_lines())
    progress = [data for name, data in got if name == "progress"]
    assert [(p["step"], p["total"]) for p in progress] == [
        (5, 20),
        (10, 20),
        (15, 20),
        (20, 20),
    ]  # 2 batches of 10 steps
    with Image.open(io.BytesIO(base64.b64decode(progress[0]["preview"]))) as preview:
        assert preview.size == (4 * 2 + 2, 4)  # a grid of the first batch's 2 chains, 4x4 each
    name, result = got[-1]
    assert name == "result"
    direct = client.post("/v1/generate", json=body).json()
    assert [image["png"] for image in result["images"]] == [image["png"] for image in direct["images"]]


def test_stream_refuses_bad_requests_before_it_starts(client):
    answer = client.post("/v1/generate/stream", json={"classes": "snekaer"})
    assert answer.status_code == 422 and "unknown class 'snekaer'" in answer.json()["error"]


@pytest.fixture(scope="module")
def one_slot(tiny_bundle):
    """A server that runs one job at a time and queues none."""
    with ServerProcess(tiny_bundle, "--worker-threads", "1", "--max-jobs", "1", "--max-steps", "1000000") as running:
        yield running


def wait_idle(http, seconds: float = 10) -> float:
    """Seconds until the server has no job running or waiting (fails after `seconds`)."""
    started = time.monotonic()
    while http.get("/v1/health").json()["jobs"]:
        assert time.monotonic() - started < seconds, "the job was not cancelled"
        time.sleep(0.05)
    return time.monotonic() - started


LONG = {"classes": "sneaker", "steps": 1_000_000}  # minutes of work unless cancelled


def test_a_full_queue_answers_429_and_a_client_that_leaves_cancels_its_chains(one_slot):
    with httpx.Client(base_url=one_slot.url, timeout=60) as http:
        with http.stream("POST", "/v1/generate/stream", json=LONG) as stream:
            lines = stream.iter_lines()  # held: a closed iterator closes the connection, which cancels the job
            assert next(line for line in lines if line.startswith("event: ")) == "event: progress"
            busy = http.post("/v1/generate", json={"classes": "sneaker", "steps": 1})
            assert busy.status_code == 429 and "busy" in busy.json()["error"] and busy.headers["retry-after"]
        wait_idle(http)  # closing the stream stopped the chains
        assert http.post("/v1/generate", json={"classes": "sneaker", "steps": 1}).status_code == 200


def test_a_plain_request_whose_client_leaves_is_cancelled(one_slot):
    with httpx.Client(base_url=one_slot.url, timeout=60) as http:
        with pytest.raises(httpx.ReadTimeout):
            http.post("/v1/generate", json=LONG, timeout=1.0)
        wait_idle(http)


def test_remote_addresses_need_allow_remote(tiny_bundle):
    done = cli("serve", "--bundle", str(tiny_bundle), "--host", "0.0.0.0", "--port", "0")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "--allow-remote" in done.stderr
    with ServerProcess(tiny_bundle, "--host", "0.0.0.0", "--allow-remote") as remote:
        assert "warning: serving on 0.0.0.0" in remote.log.read_text()
        assert httpx.get(remote.url + "/v1/health").status_code == 200


def test_without_the_extra_serve_is_a_one_line_error():
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.modules['fastapi'] = None\nfrom latent_onnx.cli import main; main()",
            "serve",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert (
        done.stderr == "latent-onnx: error: latent-onnx serve needs the serve extra: pip install 'latent-onnx[serve]'\n"
    )
