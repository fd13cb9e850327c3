"""Issue 15: the upload endpoint fed random bytes, mutated small PNG, JPEG, GIF and TIFF files, and random form
fields answers 200 or a 4xx with a JSON error; never a 500."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

pytest.importorskip("fastapi", reason="the service needs fastapi (pip install fastapi uvicorn python-multipart)")
pytest.importorskip("httpx", reason="FastAPI's test client needs httpx")

from fastapi.testclient import TestClient  # noqa: E402

from bganhash.collection import BuildConfig, build_collection  # noqa: E402
from bganhash.features.config import FeatureConfig  # noqa: E402
from bganhash.serve.app import create_app  # noqa: E402
from conftest import image_bytes, write_digits  # noqa: E402

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                database=None)
_RNG = np.random.default_rng(15)
_PIXELS = _RNG.integers(0, 256, (24, 20, 3), dtype=np.uint8)
SEEDS = {
    "png": image_bytes(_PIXELS),
    "png-rgba": image_bytes(Image.fromarray(_PIXELS).convert("RGBA")),
    "png-16bit": image_bytes(Image.fromarray(_PIXELS[..., 0].astype(np.uint16) * 257)),
    "png-palette": image_bytes(Image.fromarray(_PIXELS).convert("P")),
    "jpeg": image_bytes(_PIXELS, "JPEG"),
    "gif": image_bytes(_PIXELS, "GIF"),
    "tiff": image_bytes(_PIXELS, "TIFF"),
}
CONTENT_TYPES = ["image/png", "image/jpeg", "application/octet-stream", "text/plain", "", "image/svg+xml"]


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> TestClient:
    base = tmp_path_factory.mktemp("fuzz-upload")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BGANHASH_CACHE", str(base / "cache"))
        write_digits(base / "digits", range(8))
        build_collection(base / "digits", base / "digits.index", config=BuildConfig(method="lsh", n_bits=16),
                         feature_config=FeatureConfig(image_size=32), progress=False)
    app = create_app(base / "digits.index", max_upload_bytes=50_000, max_pixels=300 * 300)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def check(response) -> None:
    """200 with results, or a 4xx whose body is a JSON error."""
    assert response.status_code == 200 or 400 <= response.status_code < 500, (response.status_code, response.text)
    body = response.json()
    assert ("results" in body) if response.status_code == 200 else isinstance(body.get("error"), str)


@st.composite
def mutated_image(draw) -> bytes:
    """A small valid image with a few bytes changed, bytes inserted, or its end cut off."""
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data) - 1))
        how = draw(st.sampled_from(["byte", "insert", "truncate", "header"]))
        if how == "byte":
            data[at] = draw(st.integers(0, 255))
        elif how == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif how == "truncate" and at > 8:
            del data[at:]
        else:  # the header, where the size and mode live
            data[min(at, 40)] = draw(st.integers(0, 255))
    return bytes(data)


form_values = st.one_of(st.none(), st.text(max_size=12), st.integers(-10, 10**12).map(str),
                        st.sampled_from(["²", "٣", "1e3", "NaN", " 5 ", "0", "101", "9" * 5000]))


@FUZZ
@given(data=st.binary(max_size=2048), name=st.text(max_size=40), content_type=st.sampled_from(CONTENT_TYPES))
def test_random_bytes_uploaded_never_give_a_500(client, data, name, content_type):
    check(client.post("/search", files={"file": (name or "x", data, content_type)}))


@FUZZ
@given(data=mutated_image(), k=form_values)
def test_mutated_images_uploaded_never_give_a_500(client, data, k):
    form = {} if k is None else {"k": k}
    check(client.post("/search", files={"file": ("query", data, "image/png")}, data=form))


@FUZZ
@given(data=st.one_of(mutated_image(), st.binary(max_size=512)), k=form_values,
       extra=st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=20), max_size=4),
       field=st.sampled_from(["file", "file", "image", "k"]))
def test_random_form_fields_never_give_a_500(client, data, k, extra, field):
    form = {**extra, **({} if k is None else {"k": k})}
    form.pop(field, None)
    check(client.post("/search", files={field: ("q.png", data, "image/png")}, data=form))


@FUZZ
@given(data=st.one_of(mutated_image(), st.binary(max_size=512)), content_type=st.sampled_from(CONTENT_TYPES[:3]),
       k=st.one_of(st.none(), st.text(max_size=8)))
def test_raw_image_bodies_with_random_query_k_never_give_a_500(client, data, content_type, k):
    params = {} if k is None else {"k": k}
    check(client.post("/search", content=data, params=params, headers={"content-type": content_type}))
