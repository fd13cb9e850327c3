"""The search service through FastAPI's test client: every endpoint, and every bad input answered in JSON."""

from __future__ import annotations

import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the service needs fastapi (pip install fastapi uvicorn python-multipart)")
pytest.importorskip("httpx", reason="FastAPI's test client needs httpx")

from fastapi.testclient import TestClient  # noqa: E402

from bganhash.collection import BuildConfig, Collection, build_collection  # noqa: E402
from bganhash.features.config import FeatureConfig  # noqa: E402
from bganhash.serve.app import MAX_K, create_app  # noqa: E402
from conftest import image_bytes, write_digits  # noqa: E402

MAX_UPLOAD = 200_000
MAX_PIXELS = 400 * 400
N_IMAGES = 30


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("service")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BGANHASH_CACHE", str(base / "cache"))
        write_digits(base / "digits", range(N_IMAGES))
        build_collection(base / "digits", base / "digits.index", config=BuildConfig(method="lsh", n_bits=32),
                         feature_config=FeatureConfig(image_size=32), progress=False)
    return base / "digits.index"


@pytest.fixture(scope="module")
def client(index_dir) -> TestClient:
    app = create_app(index_dir, max_upload_bytes=MAX_UPLOAD, max_pixels=MAX_PIXELS)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def collection(index_dir) -> Collection:
    with Collection.load(index_dir) as loaded:
        yield loaded


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height 1-bit pixels, with almost no data: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def upload(client: TestClient, data: bytes, name: str = "query.png", **form) -> object:
    return client.post("/search", files={"file": (name, data, "image/png")}, data=form)


# ---------------------------------------------------------------------------------------------- endpoints


def test_health_reports_what_is_loaded(client):
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["n_images"] == N_IMAGES and body["n_bits"] == 32
    assert body["max_upload_bytes"] == MAX_UPLOAD and body["method"] == "lsh"


def test_search_page_has_a_file_input_and_a_result_grid(client):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert 'type="file"' in response.text and 'id="results"' in response.text and "/search" in response.text


def test_openapi_documents_search_with_uploads_and_ids(client):
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    content = schema["paths"]["/search"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(content)
    assert {"/health", "/images/{image_id}", "/thumbnails/{image_id}"} <= set(schema["paths"])


@pytest.mark.parametrize("k", [1, 5, N_IMAGES, MAX_K])
def test_upload_of_an_indexed_image_finds_it_first_with_k_results(client, collection, index_dir, k):
    target = 11
    data = (Path(collection.root) / collection.paths[target]).read_bytes()
    body = upload(client, data, k=str(k)).json()
    assert len(body["results"]) == min(k, N_IMAGES) and body["k"] == k
    first = body["results"][0]
    assert (first["id"], first["distance"], first["path"]) == (int(collection.ids[target]), 0, collection.paths[target])
    scores = [r["score"] for r in body["results"]]  # ordered by the second stage: similarity
    assert first["score"] > 0.999 and scores == sorted(scores, reverse=True)
    assert body["timings_ms"]["encode"] > 0


def test_upload_results_equal_the_python_api(client, collection):
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    body = upload(client, image_bytes(image), k="7").json()
    expected = collection.search_images([image], k=7)[0]
    assert [(r["id"], r["distance"]) for r in body["results"]] == [(m.id, m.distance) for m in expected]


def test_raw_image_body_and_query_k_work_too(client):
    data = image_bytes(np.full((20, 20, 3), 128, np.uint8))
    response = client.post("/search?k=3", content=data, headers={"content-type": "image/png"})
    assert response.status_code == 200 and len(response.json()["results"]) == 3


def test_search_by_id_reranks_and_reports_brute_force_hamming_distances(client, collection):
    from bganhash.codes import unpack_codes

    target = 4
    body = client.post("/search", json={"id": int(collection.ids[target]), "k": 10}).json()
    codes = unpack_codes(collection.codes, collection.n_bits)
    oracle = dict(zip(collection.ids.tolist(), (codes != codes[target]).sum(axis=1).tolist()))
    assert body["results"][0]["id"] == int(collection.ids[target]) and body["results"][0]["score"] > 0.999
    assert all(r["distance"] == oracle[r["id"]] for r in body["results"])
    scores = [r["score"] for r in body["results"]]
    assert len(scores) == 10 and scores == sorted(scores, reverse=True)
    assert [(m.id, m.distance) for m in collection.search_ids([int(collection.ids[target])], 10)[0]] == [
        (r["id"], r["distance"]) for r in body["results"]]
    assert body["query"] == {"id": int(collection.ids[target]), "path": collection.paths[target]}


def test_thumbnails_and_originals_are_served_by_id(client, collection):
    image_id = int(collection.ids[2])
    thumbnail = client.get(f"/thumbnails/{image_id}")
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
    assert thumbnail.content == collection.thumbnail(image_id)
    original = client.get(f"/images/{image_id}")
    assert original.status_code == 200 and original.headers["content-type"] == "image/png"
    assert original.content == (Path(collection.root) / collection.paths[2]).read_bytes()
    assert original.headers["x-content-type-options"] == "nosniff"


# ---------------------------------------------------------------------------------------------- bad input


def _truncated_png() -> bytes:
    data = image_bytes(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    return data[: len(data) // 2]


@pytest.mark.parametrize("name, data, status, message", [
    ("empty", b"", 400, "empty"),
    ("not an image", b"hello, I am a text file" * 10, 415, "not an image"),
    ("pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", 415, "not an image"),
    ("truncated", _truncated_png(), 400, "truncated"),
    ("too many pixels", image_bytes(np.zeros((401, 400, 3), np.uint8)), 413, "pixels"),
    ("decompression bomb", png_header_only(100_000, 100_000), 413, "pixels"),
    ("unsupported mode", image_bytes(Image.new("LAB", (8, 8)), "TIFF"), 415, "mode 'LAB'"),
])  # fmt: skip
def test_bad_uploads_get_a_json_error_naming_the_problem(client, name, data, status, message):
    response = upload(client, data)
    assert response.status_code == status, name
    assert message in response.json()["error"], name


def test_an_upload_over_the_size_limit_is_refused_by_its_content_length(client):
    response = upload(client, b"\0" * (MAX_UPLOAD + 100_000))
    assert response.status_code == 413 and "limit" in response.json()["error"]


def test_a_streamed_upload_over_the_size_limit_is_cut_off(client):
    def chunks():
        for _ in range(40):
            yield b"\0" * 10_000

    response = client.post("/search", content=chunks(), headers={"content-type": "image/png"})
    assert response.status_code == 413 and "limit" in response.json()["error"]


@pytest.mark.parametrize("request_kwargs, status, message", [
    ({"json": {"id": "seven"}}, 422, "id"),
    ({"json": {"k": 3}}, 422, "id"),
    ({"json": {"id": 1, "k": 0}}, 422, "k"),
    ({"json": {"id": 1, "k": MAX_K + 1}}, 422, "k"),
    ({"json": [1, 2]}, 422, "JSON object"),
    ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 422, "invalid JSON"),
    ({"files": {"image": ("a.png", b"x", "image/png")}}, 422, "'file'"),
    ({"files": {"file": ("a.png", b"x", "image/png")}, "data": {"k": "many"}}, 422, "k"),
    ({"content": b"id=3", "headers": {"content-type": "text/plain"}}, 415, "content type"),
    ({"content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data; boundary=x"}}, 422, "'file'"),
])  # fmt: skip
def test_malformed_requests_get_422_or_415_in_json(client, request_kwargs, status, message):
    response = client.post("/search", **request_kwargs)
    assert response.status_code == status
    assert message in response.json()["error"]


@pytest.mark.parametrize("path, status", [
    ("/search?k=-1", 422),
    ("/thumbnails/999999", 404),
    ("/thumbnails/-1", 404),
    ("/images/999999", 404),
    ("/images/abc", 422),
    ("/images/..%2F..%2Fetc%2Fpasswd", 404),
    ("/images/../../etc/passwd", 404),
    ("/thumbnails/1.5", 422),
    ("/no-such-page", 404),
])  # fmt: skip
def test_unknown_ids_and_paths_never_reach_the_filesystem(client, path, status):
    response = client.post(path, json={"id": 0}) if path.startswith("/search") else client.get(path)
    assert response.status_code == status
    assert "error" in response.json() and "root:" not in response.text


def test_unknown_id_search_is_404(client):
    response = client.post("/search", json={"id": 123456})
    assert response.status_code == 404 and "123456" in response.json()["error"]


def test_the_service_keeps_serving_under_a_concurrent_mix_of_good_and_bad_requests(client, collection):
    good = image_bytes(np.full((16, 16, 3), 90, np.uint8))
    requests = [
        lambda: upload(client, good, k="3"),
        lambda: upload(client, b""),
        lambda: upload(client, _truncated_png()),
        lambda: upload(client, png_header_only(50_000, 50_000)),
        lambda: client.post("/search", json={"id": int(collection.ids[0]), "k": 2}),
        lambda: client.post("/search", content=b"{", headers={"content-type": "application/json"}),
    ] * 4
    with ThreadPoolExecutor(max_workers=6) as pool:
        statuses = [response.status_code for response in pool.map(lambda send: send(), requests)]
    assert statuses == [200, 400, 400, 413, 200, 422] * 4
    assert client.get("/health").json()["status"] == "ok"
