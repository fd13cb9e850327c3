"""Duplicate groups (bganhash.collection.duplicates): the union-find, the library on a small collection with
known copies, the `bganhash duplicates` command, and the service's /duplicates page."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from bganhash._validation import InputError
from bganhash.cli import main
from bganhash.collection import BuildConfig, Collection, build_collection
from bganhash.collection.duplicates import UnionFind, find_duplicates, near_pairs, pair_groups
from bganhash.features.config import FeatureConfig
from conftest import write_digits

N_DIGITS = 30


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    """30 digits (64 px PNGs) plus an identical copy of 0000.png and a quality-40 JPEG of 0001.png."""
    base = tmp_path_factory.mktemp("duplicates")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BGANHASH_CACHE", str(base / "cache"))
        photos = base / "photos"
        written = write_digits(photos, range(N_DIGITS), size=64)
        shutil.copy(written[0], photos / "copy-0000.png")
        Image.open(written[1]).convert("RGB").save(photos / "reencoded-0001.jpg", quality=40)
        build_collection(photos, base / "digits.index", config=BuildConfig(method="itq", n_bits=16),
                         feature_config=FeatureConfig(image_size=64), progress=False)
    return base / "digits.index"


@pytest.fixture
def collection(index_dir):
    with Collection.load(index_dir) as loaded:
        yield loaded


def test_union_find_joins_chains_and_leaves_singletons_out():
    sets = UnionFind(7)
    for a, b in [(0, 1), (2, 1), (5, 4)]:
        sets.union(a, b)
    assert sets.groups() == [[0, 1, 2], [4, 5]]
    assert pair_groups(6, np.array([3]), np.array([0]), exact=[[5, 2]]) == [[0, 3], [2, 5]]


def test_each_copy_is_grouped_with_its_original_and_nothing_else(collection):
    report = find_duplicates(collection, threshold=0.95)
    groups = {tuple(group.paths): group for group in report.groups}
    assert set(groups) == {("0000.png", "copy-0000.png"), ("0001.png", "reencoded-0001.jpg")}
    assert groups[("0000.png", "copy-0000.png")].kind == "exact"
    near = groups[("0001.png", "reencoded-0001.jpg")]
    assert near.kind == "near" and 0.95 <= near.min_similarity < 1.0
    assert report.n_copies == 2 and report.hashed_files >= 2 and report.compared == "features"
    assert report.groups[0].kind == "exact"  # exact groups are listed first


def test_a_lower_threshold_finds_more_pairs_and_identical_features_are_exact_without_hashing(collection):
    strict = near_pairs(collection, min_similarity=0.95, candidates=40)
    loose = near_pairs(collection, min_similarity=0.3, candidates=40)
    assert len(loose[0]) > len(strict[0]) >= 2
    assert np.all(loose[0] < loose[1]) and np.all(loose[2] >= 0.3)
    unhashed = find_duplicates(collection, threshold=0.95, hash_files=False)
    assert unhashed.hashed_files == 0
    assert [g.kind for g in unhashed.groups if "copy-0000.png" in g.paths] == ["exact"]  # identical features


def test_an_index_without_stored_features_compares_codes_only(collection):
    collection.vectors = None
    report = find_duplicates(collection, max_distance=0)
    assert report.compared == "codes" and report.threshold is None
    exact = [g for g in report.groups if "copy-0000.png" in g.paths]
    assert exact and exact[0].kind == "exact" and exact[0].min_similarity is None


@pytest.mark.parametrize("options, message", [
    ({"threshold": 1.5}, "between -1 and 1"),
    ({"candidates": 0}, "at least 1"),
    ({"max_distance": 17}, "between 0 and 16"),
])  # fmt: skip
def test_bad_settings_are_refused(collection, options, message):
    with pytest.raises(InputError, match=message):
        find_duplicates(collection, **options)


def test_the_command_prints_groups_as_text_and_json(index_dir):
    runner = CliRunner()
    text = runner.invoke(main, ["duplicates", str(index_dir), "--threshold", "0.95"], catch_exceptions=False)
    assert text.exit_code == 0, text.output
    assert "2 group(s) of copies among 32 images (1 exact, 1 near" in text.stdout
    assert "cosine similarity of the stored features >= 0.95" in text.stdout
    assert "group 1: exact" in text.stdout and "copy-0000.png" in text.stdout
    document = json.loads(runner.invoke(main, ["duplicates", str(index_dir), "--threshold", "0.95", "--json"]).stdout)
    assert document["n_groups"] == 2 and document["n_copies"] == 2
    assert {image["path"] for image in document["groups"][0]["images"]} == {"0000.png", "copy-0000.png"}
    full = runner.invoke(main, ["duplicates", str(index_dir), "--threshold", "0.95", "--absolute"]).stdout
    with Collection.load(index_dir, verify=False) as loaded:
        root = loaded.root
    assert str(Path(root) / "copy-0000.png") in full


def test_the_command_explains_the_threshold_and_refuses_a_missing_index(tmp_path):
    runner = CliRunner()
    help_text = runner.invoke(main, ["duplicates", "--help"]).stdout
    assert "cosine similarity" in help_text and "BENCHMARKS.md" in help_text
    missing = runner.invoke(main, ["duplicates", str(tmp_path / "nope.index")])
    assert missing.exit_code == 2 and missing.stderr.startswith("Error: ") and missing.stderr.count("\n") == 1
    bad = runner.invoke(main, ["duplicates", str(tmp_path), "--threshold", "2"])
    assert bad.exit_code == 2 and "--threshold" in bad.stderr


def test_the_service_shows_the_groups_as_thumbnails(index_dir):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from bganhash.serve.app import create_app

    with TestClient(create_app(index_dir, warm_up=False), raise_server_exceptions=False) as client:
        page = client.get("/duplicates")
        assert page.status_code == 200 and "/duplicates.json" in page.text and "thumbnail" in page.text
        body = client.get("/duplicates.json", params={"threshold": 0.95}).json()
        assert body["n_groups"] == 2 and body["generation"] == 1
        first = body["groups"][0]["images"][0]
        assert client.get(first["thumbnail"]).headers["content-type"] == "image/jpeg"
        assert client.get("/duplicates.json", params={"threshold": 2}).status_code == 422
        icon = client.get("/favicon.ico")
        assert icon.status_code == 200 and icon.headers["content-type"] == "image/x-icon" and icon.content[:4] == (
            b"\x00\x00\x01\x00")


def test_both_pages_share_one_style_sheet(index_dir):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from bganhash.serve.app import create_app

    with TestClient(create_app(index_dir, warm_up=False), raise_server_exceptions=False) as client:
        pages = [client.get("/").text, client.get("/duplicates").text]
        sheet = client.get("/static/common.css")
    assert sheet.status_code == 200 and sheet.headers["content-type"].startswith("text/css")
    assert "--accent" in sheet.text and "#status.error" in sheet.text
    for page in pages:
        assert '<link rel="stylesheet" href="/static/common.css">' in page
        assert "--accent:" not in page and "box-sizing" not in page  # the shared rules are not copied in
