"""The Hamming index: brute-force popcount oracle, faiss parity (ties included), ids, persistence."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from bganhash import InputError
from bganhash.codes import pack_codes
from bganhash.index import MISSING_DISTANCE, Index

needs_faiss = pytest.mark.skipif(importlib.util.find_spec("faiss") is None, reason="faiss-cpu is not installed")
# the numpy engine, the default (faiss's IndexBinaryFlat when installed), and faiss by its pre-backend-string name
BACKENDS = ["flat,engine=numpy", "flat", pytest.param("faiss", marks=needs_faiss)]


def brute_force_search(query_codes, database_codes, ids, k):
    """k nearest by per-pair popcount (bin(x).count), ties by insertion order, padded like faiss."""
    packed_db = [int.from_bytes(row.tobytes(), "big") for row in pack_codes(database_codes)]
    distances, found = [], []
    for query in pack_codes(query_codes):
        q = int.from_bytes(query.tobytes(), "big")
        row = sorted((bin(q ^ code).count("1"), position) for position, code in enumerate(packed_db))[:k]
        missing = k - len(row)
        distances.append([d for d, _ in row] + [MISSING_DISTANCE] * missing)
        found.append([int(ids[p]) for _, p in row] + [-1] * missing)
    return np.array(distances), np.array(found)


def random_codes(rng, n, n_bits):
    return 2 * rng.integers(0, 2, size=(n, n_bits)) - 1


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_bits", [12, 24, 48, 63, 64])
@pytest.mark.parametrize("k", [1, 10, 150])
def test_search_matches_brute_force(rng, backend, n_bits, k):
    database, queries = random_codes(rng, 120, n_bits), random_codes(rng, 7, n_bits)
    ids = rng.permutation(1000)[:120]
    index = Index(n_bits, backend=backend)
    index.add(database[:50], ids[:50])
    index.add(database[50:], ids[50:])
    distances, found = index.search(queries, k)
    k = min(k, 120)  # k is capped at the number of codes held
    assert distances.dtype == np.int32 and found.dtype == np.int64 and distances.shape == (7, k)
    expected_distances, expected_ids = brute_force_search(queries, database, ids, k)
    np.testing.assert_array_equal(distances, expected_distances)
    np.testing.assert_array_equal(found, expected_ids)


@needs_faiss
@pytest.mark.parametrize("k", [1, 3, 50, 999, 3000])
def test_faiss_and_flat_agree_on_heavy_ties(rng, k):
    # 8 bits over 3,000 codes: every distance is shared by hundreds of items.
    database, queries = random_codes(rng, 3000, 8), random_codes(rng, 40, 8)
    results = []
    for backend in ("flat,engine=numpy", "faiss"):
        index = Index(8, backend=backend)
        index.add(database)
        results.append(index.search(queries, k))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_ranking_is_search_with_k_ntotal(rng):
    index = Index(16)
    index.add(random_codes(rng, 30, 16))
    queries = random_codes(rng, 3, 16)
    distances, ids = index.ranking(queries)
    assert ids.shape == (3, 30) and sorted(ids[0].tolist()) == list(range(30))
    np.testing.assert_array_equal(distances, index.search(queries, 30)[0])


def test_empty_index_search_is_all_missing():
    distances, ids = Index(16).search(np.ones((2, 16)), 3)
    assert (ids == -1).all() and (distances == MISSING_DISTANCE).all()


def test_default_ids_are_consecutive_and_continue_after_removal(rng):
    index = Index(16)
    index.add(random_codes(rng, 3, 16))
    index.add(random_codes(rng, 2, 16))
    assert index.ids.tolist() == [0, 1, 2, 3, 4] and len(index) == index.ntotal == 5
    assert index.remove_ids([1, 4, 77]) == 2
    index.add(random_codes(rng, 1, 16))
    assert index.ids.tolist() == [0, 2, 3, 4]


@pytest.mark.parametrize("backend", BACKENDS)
def test_remove_ids_then_search_matches_brute_force(rng, backend):
    database, queries = random_codes(rng, 40, 24), random_codes(rng, 5, 24)
    index = Index(24, backend=backend)
    index.add(database)
    index.remove_ids(np.arange(0, 40, 3))
    keep = np.setdiff1d(np.arange(40), np.arange(0, 40, 3))
    expected = brute_force_search(queries, database[keep], keep, 8)
    for got, want in zip(index.search(queries, 8), expected):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        ([0, 0], "duplicate ids"),
        ([5], "got 1 ids for 2 codes"),
        ([-1, 3], ">= 0"),
        ([1.0, 2.0], "integers"),
        ([7, 8], "already"),
    ],
)
def test_add_refuses_bad_ids(ids, message):
    index = Index(8)
    index.add(np.ones((1, 8)), [7])
    with pytest.raises(InputError, match=message):
        index.add(np.ones((2, 8)), ids)
    assert index.ntotal == 1


def test_add_refuses_codes_of_another_length_or_layout():
    index = Index(12)
    with pytest.raises(InputError, match="16 bits but this index holds 12-bit"):
        index.add(np.ones((2, 16)))
    with pytest.raises(InputError, match="uint8"):
        index.add_packed(np.ones((2, 2), np.int64))
    with pytest.raises(InputError, match="padding bits"):
        index.add_packed(np.full((2, 2), 255, np.uint8))
    with pytest.raises(InputError, match="query codes have 8 bits"):
        index.search(np.ones((1, 8)), 1)


def test_reconstruct_and_codes_return_the_packed_codes(rng):
    codes = random_codes(rng, 4, 12)
    index = Index(12)
    index.add(codes, ids=[10, 11, 12, 13])
    np.testing.assert_array_equal(index.codes, pack_codes(codes))
    np.testing.assert_array_equal(index.reconstruct(12), pack_codes(codes)[2])
    with pytest.raises(InputError, match="not in the index"):
        index.reconstruct(99)
    with pytest.raises(ValueError):
        index.codes[0, 0] = 1  # read-only view


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_bits", [12, 63, 64])
def test_save_load_search_identity(tmp_path, rng, backend, n_bits):
    index = Index(n_bits, backend=backend)
    index.add(random_codes(rng, 50, n_bits), ids=rng.permutation(500)[:50])
    queries = random_codes(rng, 6, n_bits)
    path = tmp_path / "codes.bgidx"
    index.save(path)
    loaded = Index.load(path)
    assert (loaded.n_bits, loaded.backend, loaded.ntotal) == (n_bits, "flat", 50)  # the engine is not stored
    np.testing.assert_array_equal(loaded.ids, index.ids)
    for got, want in zip(loaded.search(queries, 9), index.search(queries, 9)):
        np.testing.assert_array_equal(got, want)
    assert Index.load(path, backend="flat").backend == "flat"


@pytest.fixture
def saved_index(tmp_path, rng):
    index = Index(16)
    index.add(random_codes(rng, 20, 16))
    path = tmp_path / "index.bgidx"
    index.save(path)
    return path


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: data[:-5], "truncated"),
        (lambda data: data[:10], "truncated"),
        (lambda data: data + b"\0", "trailing bytes"),
        (lambda data: b"PK\x03\x04" + data[4:], "not a bganhash index file"),
        (lambda data: b"{}", "not a bganhash index file"),
        (lambda data: data[:8] + (3).to_bytes(4, "little") + data[12:], "format version 3"),
        (lambda data: data[:40] + bytes([data[40] ^ 1]) + data[41:], "checksum"),
    ],
)
def test_load_refuses_damaged_or_foreign_files(saved_index, damage, message):
    saved_index.write_bytes(damage(saved_index.read_bytes()))
    with pytest.raises(InputError, match=message) as error:
        Index.load(saved_index)
    assert str(saved_index) in str(error.value)


def test_load_refuses_a_missing_file(tmp_path):
    with pytest.raises(InputError, match="cannot read index file"):
        Index.load(tmp_path / "absent.bgidx")


def test_unknown_backend_and_missing_faiss_are_clear_errors(monkeypatch):
    with pytest.raises(InputError, match="unknown kind 'annoy'"):
        Index(16, backend="annoy")
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(InputError, match="pip install faiss-cpu"):
        Index(16, backend="faiss")
