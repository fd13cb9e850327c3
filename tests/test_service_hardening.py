"""The service under attack (issue 15): bounded memory for small bombs, the Host header checked, no 500s on
odd JSON or form numbers, 413 for an oversized streamed multipart body, and clear limits on max_pixels."""

from __future__ import annotations

import io
import json
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the service needs fastapi (pip install fastapi uvicorn python-multipart)")
pytest.importorskip("httpx", reason="FastAPI's test client needs httpx")

from fastapi.testclient import TestClient  # noqa: E402

from bganhash._validation import InputError  # noqa: E402
from bganhash.collection import BuildConfig, Collection, build_collection  # noqa: E402
from bganhash.collection.query import (  # noqa: E402
    DEFAULT_MAX_PIXELS,
    MAX_PIXELS_CEILING,
    DecodeBudget,
    QueryImageError,
    decode_query,
)
from bganhash.features.config import FeatureConfig  # noqa: E402
from bganhash.serve import app as app_module  # noqa: E402
from bganhash.serve.app import create_app  # noqa: E402
from bganhash.serve.limits import UploadGate, default_allowed_hosts, load_json, whole_number  # noqa: E402
from conftest import image_bytes, write_digits  # noqa: E402

MAX_UPLOAD = 200_000


def zero_png(width: int, height: int, colour_type: int = 2, depth: int = 8) -> bytes:
    """An all-zero PNG streamed through zlib: a few hundred bytes per megapixel (the issue's bombs)."""
    pixel_bytes = {0: 1, 2: 3, 4: 2, 6: 4}[colour_type] * depth // 8

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + width * pixel_bytes)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("hardening")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BGANHASH_CACHE", str(base / "cache"))
        write_digits(base / "digits", range(12))
        build_collection(base / "digits", base / "digits.index", config=BuildConfig(method="lsh", n_bits=32),
                         feature_config=FeatureConfig(image_size=32), progress=False)
    return base / "digits.index"


@pytest.fixture(scope="module")
def collection(index_dir) -> Collection:
    with Collection.load(index_dir) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def client(collection) -> TestClient:
    app = create_app(collection, max_upload_bytes=MAX_UPLOAD, max_pixels=400 * 400)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def upload(client: TestClient, data: bytes, **form) -> object:
    return client.post("/search", files={"file": ("query.png", data, "image/png")}, data=form)


# ------------------------------------------------------------------- item 1: a small upload costs little memory


def test_the_default_pixel_limit_refuses_the_issues_9400_square_bomb():
    bomb = zero_png(9400, 9400)
    assert len(bomb) < 300_000
    with pytest.raises(QueryImageError, match="88,360,000 pixels; the limit is 50,000,000") as caught:
        decode_query(bomb, min_side=224)
    assert caught.value.status == 413 and DEFAULT_MAX_PIXELS == 50_000_000


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "I;16", "LA"])
def test_a_large_png_is_shrunk_as_it_is_decoded_to_what_the_backbone_needs(mode):
    gradient = np.linspace(0, 255, 3000 * 2000, dtype=np.float32).reshape(2000, 3000)
    gray = Image.fromarray(gradient.astype(np.uint8))
    image = Image.fromarray((gradient * 257).astype(np.uint16)) if mode == "I;16" else gray.convert(mode)
    pixels = decode_query(image_bytes(image), min_side=224)
    assert pixels.dtype == np.uint8 and pixels.shape[2] == 3
    assert 224 <= min(pixels.shape[:2]) < 2 * 224  # 2000 // 224 = 8: 250 x 375
    assert pixels.shape[:2] == (250, 375)
    assert abs(float(pixels[..., 0].mean()) - 127.5) < 2  # the picture, not a blank


def test_shrinking_keeps_the_exif_orientation():
    image = Image.new("RGB", (1200, 600), "white")
    image.paste((255, 0, 0), (0, 0, 300, 600))  # red on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    buffer = io.BytesIO()
    image.save(buffer, "PNG", exif=exif)
    pixels = decode_query(buffer.getvalue(), min_side=100)
    assert pixels.shape[0] > pixels.shape[1]  # now portrait
    assert pixels[5, pixels.shape[1] // 2, 1] < 50  # red on top


_MEASURE = """
import resource, sys
from bganhash.collection.query import decode_query
data = open(sys.argv[1], 'rb').read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
pixels = decode_query(data, min_side=224)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) // 1024, pixels.shape)
"""


def test_decoding_a_16_bit_bomb_holds_little_more_than_the_decoded_image(tmp_path):
    # 6000 x 6000 16-bit gray: 72 MB decoded; converting it whole to float64 and RGB cost about 600 MB more
    bomb = tmp_path / "gray16.png"
    bomb.write_bytes(zero_png(6000, 6000, colour_type=0, depth=16))
    measured = subprocess.run([sys.executable, "-c", _MEASURE, str(bomb)], capture_output=True, text=True,
                              check=True, timeout=120)
    grown_mb = int(measured.stdout.split()[0])
    assert grown_mb < 72 + 60, measured.stdout


def test_the_decode_budget_makes_large_decodes_take_turns():
    budget = DecodeBudget(100)
    inside, most = [0], [0]
    lock = threading.Lock()

    def decode() -> None:
        with budget.reserve(80):
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.05)
            with lock:
                inside[0] -= 1

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: decode(), range(4)))
    assert most[0] == 1 and budget.used == 0
    with budget.reserve(10**9):  # larger than the whole budget: waits to be alone, then runs
        assert budget.used == 100


def test_uploads_between_decoding_and_encoding_are_bounded(collection, monkeypatch):
    app = create_app(collection, max_upload_bytes=MAX_UPLOAD, max_pixels=400 * 400, warm_up=False)
    service = app.state.service
    inside, most = [0], [0]
    lock = threading.Lock()

    def slow_search(data: bytes, k: int) -> dict:
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.15)
        with lock:
            inside[0] -= 1
        return {"results": []}

    monkeypatch.setattr(service, "search_upload", slow_search)
    good = image_bytes(np.full((16, 16, 3), 90, np.uint8))
    with TestClient(app, raise_server_exceptions=False) as test_client, ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: upload(test_client, good).status_code, range(8)))
    assert statuses == [200] * 8
    assert most[0] <= app_module._UPLOAD_SLOTS < 8


def test_uploads_beyond_the_queue_get_503_with_retry_after():
    gate = UploadGate(slots=2, queue=1)
    for _ in range(3):
        gate.admit()
    with pytest.raises(Exception) as caught:
        gate.admit()
    assert caught.value.status_code == 503 and caught.value.headers == {"Retry-After": "1"}
    gate.leave()
    gate.admit()


# ------------------------------------------------------------------- item 5: the Host header (DNS rebinding)


def test_the_default_hosts_are_loopback_and_the_bound_host():
    assert default_allowed_hosts("127.0.0.1") == ["localhost", "127.0.0.1", "::1"]
    assert default_allowed_hosts("192.168.1.5", ["Photos.LAN"]) == ["localhost", "127.0.0.1", "::1", "192.168.1.5",
                                                                   "photos.lan"]
    assert socket.gethostname().lower() in default_allowed_hosts("0.0.0.0")  # this machine's name too


@pytest.fixture(scope="module")
def served_app(index_dir):
    """The app exactly as `serve` builds it for 127.0.0.1, caught before uvicorn runs it."""
    import uvicorn

    caught = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(uvicorn, "run", lambda app, **options: caught.update(app=app, options=options))
        app_module.serve(index_dir, "127.0.0.1", 8123, allowed_hosts=["photos.lan", "*.example.org"])
    return caught["app"]


@pytest.mark.parametrize("host, status", [
    ("127.0.0.1:8123", 200), ("localhost:8123", 200), ("LOCALHOST", 200), ("[::1]:8123", 200),
    ("photos.lan:8123", 200), ("a.example.org", 200),
    ("evil.example.com", 400), ("evil.example.com:8123", 400), ("127.0.0.1.evil.example.com", 400),
    ("example.org", 400), ("", 400),
])  # fmt: skip
def test_serve_answers_only_to_its_own_host_names(served_app, host, status):
    with TestClient(served_app, base_url="http://127.0.0.1:8123", raise_server_exceptions=False) as test_client:
        response = test_client.get("/health", headers={"host": host})
    assert response.status_code == status, host
    if status == 400:
        error = response.json()["error"]
        assert "Host" in error and "localhost" in error
        if host:
            assert "--allowed-host" in error and repr(host) in error


def test_allowed_hosts_star_accepts_any_host(collection):
    app = create_app(collection, warm_up=False, allowed_hosts=["*"])
    with TestClient(app) as test_client:
        assert test_client.get("/health", headers={"host": "anything.example"}).status_code == 200


# ------------------------------------------------------------------- item 7: no 500s on odd JSON and form numbers


@pytest.mark.parametrize("body, message", [
    (b'{"id": NaN}', "NaN is not a JSON number"),
    (b'{"id": Infinity}', "Infinity is not a JSON number"),
    (b'{"id": -Infinity, "k": 3}', "Infinity is not a JSON number"),
    (b'{"id": 1e400}', "out of range"),
    (b'{"id": 1, "k": NaN}', "NaN"),
    (b"[" * 100_000 + b"]" * 100_000, "at most 16,384"),
    (b"[" * 5_000 + b"]" * 5_000, "nested too deeply"),
    (b'{"id": ' + b"9" * 5000 + b"}", "invalid JSON"),
])  # fmt: skip
def test_odd_json_gets_a_4xx_naming_the_problem(client, body, message):
    response = client.post("/search", content=body, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500
    assert message in response.json()["error"]


@pytest.mark.parametrize("k", ["²", "٣", "1.5", "-3", "9" * 5000, "1e3", "0x10"])
def test_a_form_k_that_is_not_ascii_digits_gets_422(client, k):
    response = upload(client, image_bytes(np.full((16, 16, 3), 90, np.uint8)), k=k)
    assert response.status_code == 422 and "whole number" in response.json()["error"]


def test_query_k_superscript_gets_422(client):
    response = client.post("/search?k=²", content=image_bytes(np.zeros((8, 8, 3), np.uint8)),
                           headers={"content-type": "image/png"})
    assert response.status_code == 422


def test_validation_errors_with_odd_inputs_still_answer_json():
    assert whole_number(" 12 ") == 12 and whole_number("²") is None and whole_number("1" * 10) is None
    with pytest.raises(ValueError, match="NaN"):
        load_json(b"NaN")
    assert load_json(b'{"id": 1.5}') == {"id": 1.5}


# ------------------------------------------------------------------- item 8: 413s and clear limits


def test_a_streamed_multipart_upload_over_the_limit_gets_413_with_a_message(client):
    boundary = "xyz"

    def chunks():
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n"
               "Content-Type: image/png\r\n\r\n").encode()
        for _ in range(60):
            yield b"\0" * 10_000
        yield f"\r\n--{boundary}--\r\n".encode()

    response = client.post("/search", content=chunks(),
                           headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 413
    assert "limit" in response.json()["error"]


def test_max_pixels_above_pillows_limit_is_refused_not_capped(collection):
    with pytest.raises(InputError, match="above 89,478,485"):
        create_app(collection, max_pixels=MAX_PIXELS_CEILING + 1, warm_up=False)
    with pytest.raises(InputError, match="max_pixels=100,000,000 is above"):
        decode_query(image_bytes(np.zeros((8, 8, 3), np.uint8)), max_pixels=100_000_000)
    create_app(collection, max_pixels=MAX_PIXELS_CEILING, warm_up=False)  # the ceiling itself is fine


def test_the_cli_refuses_max_pixels_above_the_ceiling_in_one_line(index_dir):
    from click.testing import CliRunner

    from bganhash.cli import main

    result = CliRunner().invoke(main, ["serve", str(index_dir), "--max-pixels", "100000000"])
    assert result.exit_code == 2 and "89,478,485" in result.output and "Traceback" not in result.output


def test_a_damaged_thumbnail_is_a_500_naming_the_resolved_index(index_dir, tmp_path, monkeypatch):
    shutil.copytree(index_dir, tmp_path / "copy.index")
    monkeypatch.chdir(tmp_path)
    app = create_app("copy.index", warm_up=False)  # typed relative
    manifest = json.loads((tmp_path / "copy.index" / "manifest.json").read_text())
    segment = json.loads((tmp_path / "copy.index" / manifest["items"]).read_text())["segments"][0]
    with open(tmp_path / "copy.index" / segment, "r+b") as damaged:
        damaged.truncate(10)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        response = test_client.get(f"/thumbnails/{int(app.state.service.collection.ids[-1])}")
        unknown = test_client.get("/thumbnails/987654")
    assert response.status_code == 500
    assert str((tmp_path / "copy.index").resolve() / segment) in response.json()["error"]  # the segment file itself
    assert "damaged" in response.json()["error"]
    assert unknown.status_code == 404


def test_a_thumbnail_whose_file_became_a_link_out_of_the_root_is_a_404(tmp_path, monkeypatch):
    monkeypatch.setenv("BGANHASH_CACHE", str(tmp_path / "cache"))
    write_digits(tmp_path / "digits", range(4))
    write_digits(tmp_path / "outside", [2])
    build_collection(tmp_path / "digits", tmp_path / "digits.index", config=BuildConfig(method="lsh", n_bits=16),
                     feature_config=FeatureConfig(image_size=32), progress=False)
    app = create_app(tmp_path / "digits.index", warm_up=False)
    collection = app.state.service.collection
    linked = next(int(i) for i in collection.ids if collection.path_of(int(i)) == "0002.png")
    (tmp_path / "digits" / "0002.png").unlink()
    (tmp_path / "digits" / "0002.png").symlink_to(tmp_path / "outside" / "0002.png")
    with TestClient(app, raise_server_exceptions=False) as test_client:
        thumbnail, original = test_client.get(f"/thumbnails/{linked}"), test_client.get(f"/images/{linked}")
        other = test_client.get(f"/thumbnails/{next(int(i) for i in collection.ids if int(i) != linked)}")
    assert (thumbnail.status_code, original.status_code, other.status_code) == (404, 404, 200)
    assert "outside" in thumbnail.json()["error"] and "damaged" not in thumbnail.json()["error"]
