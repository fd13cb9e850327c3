"""Two-stage search: Hamming candidates re-ranked by cosine similarity on compact stored features."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from bganhash._validation import InputError
from bganhash.collection import BuildConfig, Collection, build_collection, decode_query, file_sha256
from bganhash.features.config import FeatureConfig
from bganhash.index.rerank import FeatureReducer, default_candidates, rerank
from conftest import write_digits

FEATURES = FeatureConfig(image_size=32, batch_size=64)


def test_reduced_vectors_keep_cosine_order(rng):
    centers = rng.normal(size=(5, 64))
    labels = rng.integers(0, 5, 300)
    X = (centers[labels] + 0.3 * rng.normal(size=(300, 64))).astype(np.float32)
    reducer = FeatureReducer.fit(X, dimensions=16)
    vectors = reducer.reduce(X)
    assert vectors.shape == (300, 16) and vectors.dtype == np.float16
    np.testing.assert_allclose(np.linalg.norm(vectors.astype(np.float32), axis=1), 1, atol=2e-3)
    for query in range(0, 300, 37):  # each image's nearest by the reduced vectors: itself, then its cluster
        reduced_top = np.argsort(-(vectors.astype(np.float32) @ vectors[query].astype(np.float32)), kind="stable")
        assert reduced_top[0] == query and (labels[reduced_top[:20]] == labels[query]).all()
    assert FeatureReducer.fit(X[:5], dimensions=16).dimensions == 5  # no more axes than rows
    with pytest.raises(InputError, match="features"):
        reducer.reduce(X[:, :10])


def test_large_collections_re_rank_more_candidates_by_default():
    """200 up to 10,000 images, one per 50 above, at most 1,000 (measured at 49,500 images, RESULTS.md)."""
    assert [default_candidates(n) for n in (0, 300, 10_000, 20_000, 49_500, 10**6)] == [200, 200, 200, 400, 990, 1000]


def test_rerank_orders_candidates_by_similarity_and_pads():
    stored = np.eye(4, dtype=np.float16)[[0, 1, 2, 3]]
    distances = np.array([[0, 1, 2, -1], [3, 3, 5, 9]], np.int32)
    ids = np.array([[10, 11, 12, -1], [13, 11, 10, 12]], np.int64)
    queries = np.array([[0, 0, 1, 0], [0.6, 0.8, 0, 0]], np.float16)
    row_of = {10: 0, 11: 1, 12: 2, 13: 3}
    out_d, out_i, out_s = rerank(distances, ids, queries, lambda found: stored[[row_of[i] for i in found]], k=3)
    assert out_i[0].tolist() == [12, 10, 11] and out_d[0].tolist() == [2, 0, 1]
    assert out_i[1].tolist() == [11, 10, 13] and out_d[1].tolist() == [3, 5, 3]
    np.testing.assert_allclose(out_s[1], [0.8, 0.6, 0.0], atol=1e-3)
    _, padded, scores = rerank(distances[:1], ids[:1], queries[:1], lambda f: stored[[row_of[i] for i in f]], k=5)
    assert padded[0].tolist()[3:] == [-1, -1] and np.isnan(scores[0, 3:]).all()


@pytest.fixture(scope="module")
def with_duplicates(tmp_path_factory) -> tuple[Path, Path]:
    """An ITQ index of 60 digits holding an exact copy of one of them, inserted after the original."""
    base = tmp_path_factory.mktemp("dupes")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BGANHASH_CACHE", str(base / "cache"))
        photos = base / "photos"
        write_digits(photos, range(60))
        shutil.copy(photos / "0017.png", photos / "zz-copy-of-0017.png")
        build_collection(photos, base / "photos.index", config=BuildConfig(method="itq", n_bits=16),
                         feature_config=FEATURES, progress=False)
    return photos, base / "photos.index"


def test_an_exact_duplicate_of_the_query_ranks_first(with_duplicates):
    photos, out = with_duplicates
    with Collection.load(out) as collection:
        assert collection.reranked and collection.vectors.dtype == np.float16
        assert collection.candidates == default_candidates(len(collection)) == 200
        for name in ("0017.png", "zz-copy-of-0017.png"):
            image = decode_query((photos / name).read_bytes())
            top = collection.search_images([image], k=5)[0]
            assert {m.path for m in top[:2]} == {"0017.png", "zz-copy-of-0017.png"}
            assert all(m.score > 0.999 and m.distance == 0 for m in top[:2])
        by_id = collection.search_ids([collection.ids[collection.paths.index("zz-copy-of-0017.png")]], k=2)[0]
        assert {m.path for m in by_id} == {"0017.png", "zz-copy-of-0017.png"}


def test_an_update_reduces_new_images_with_the_same_reducer(with_duplicates, tmp_path):
    photos, out = with_duplicates
    folder, index = Path(shutil.copytree(photos, tmp_path / "photos")), tmp_path / "photos.index"
    build_collection(folder, index, config=BuildConfig(method="itq", n_bits=16), feature_config=FEATURES,
                     progress=False)
    with Collection.load(index) as before:
        reducer_mean = before.reducer.mean.copy()
    write_digits(folder, range(60, 70))
    build_collection(folder, index, update=True, progress=False)
    with Collection.load(index) as after:
        assert len(after) == 71 and after.vectors.shape[0] == 71
        np.testing.assert_array_equal(after.reducer.mean, reducer_mean)
        image = decode_query((folder / "0065.png").read_bytes())
        assert after.search_images([image], k=1)[0][0].path == "0065.png"


def test_an_index_without_stored_features_searches_by_hamming_alone(with_duplicates, tmp_path):
    """Indexes written before two-stage search hold codes and ids only."""
    photos, out = with_duplicates
    old = Path(shutil.copytree(out, tmp_path / "old.index"))
    manifest = json.loads((old / "manifest.json").read_text())
    codes_file = old / manifest["codes"]
    arrays = safetensors.numpy.load(codes_file.read_bytes())
    codes_file.write_bytes(safetensors.numpy.save({"codes": arrays["codes"], "ids": arrays["ids"]}))
    manifest["files"][manifest["codes"]] = {"bytes": codes_file.stat().st_size, "sha256": file_sha256(codes_file)}
    del manifest["sha256"]  # and the manifest as format version 2 wrote it
    (old / "manifest.json").write_text(json.dumps({**manifest, "format_version": 2}))
    with Collection.load(old) as collection:
        assert not collection.reranked
        image = decode_query((photos / "0017.png").read_bytes())
        matches = collection.search_images([image], k=5)[0]
        distances = [m.distance for m in matches]
        assert distances == sorted(distances) and all(m.score is None for m in matches)
