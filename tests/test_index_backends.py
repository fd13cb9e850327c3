"""Index backends by string: flat (numpy and faiss engines), HNSW and multi-index hashing through faiss.

Oracles: the exact flat search (itself checked against a brute-force popcount in test_index.py) for the
approximate backends' recall, pigeonhole for multi-index hashing, save -> load -> search identity for every
backend, and hand-written version-1 files for backward compatibility.
"""

from __future__ import annotations

import hashlib
import importlib.util
import struct
import sys

import numpy as np
import pytest

from bganhash import InputError
from bganhash.codes import pack_codes
from bganhash.index import MISSING_DISTANCE, Index, parse_backend
from bganhash.index.engines import faiss_flat_keeps_ties

needs_faiss = pytest.mark.skipif(importlib.util.find_spec("faiss") is None, reason="faiss-cpu is not installed")
ALL_BACKENDS = [
    "flat,engine=numpy",
    pytest.param("flat,engine=faiss", marks=needs_faiss),
    pytest.param("hnsw:8,ef=32", marks=needs_faiss),
    pytest.param("mih:4,nflip=1", marks=needs_faiss),
    pytest.param("ivf:8,nprobe=2", marks=needs_faiss),
]


def clustered_codes(rng, n, n_bits, centers, flip=0.08):
    """{-1,+1} codes: a random centre each, every bit flipped with probability `flip`."""
    picked = centers[rng.integers(0, len(centers), size=n)]
    return np.where(rng.random((n, n_bits)) < flip, -picked, picked).astype(np.int8)


@pytest.fixture
def problem(rng):
    """2,000 clustered 64-bit database codes, 100 queries from the same clusters, the exact top 10."""
    centers = np.where(rng.random((30, 64)) < 0.5, -1, 1)
    database, queries = clustered_codes(rng, 2000, 64, centers), clustered_codes(rng, 100, 64, centers)
    exact = Index(64, "flat,engine=numpy")
    exact.add(database, ids=np.arange(2000) * 7 + 3)
    return database, queries, exact.search(queries, 10)


def recalls(found, exact):
    """(id recall@k: share of the exact ids found; distance recall: share of results no farther than the exact
    k-th, which counts any of several codes tied at that distance as right)."""
    (distances, ids), (exact_distances, exact_ids) = found, exact
    id_recall = np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(ids, exact_ids)])
    return id_recall, float(np.mean(distances <= exact_distances[:, -1:]))


# ---------------------------------------------------------------------------------------------- backend strings


@pytest.mark.parametrize(
    ("spec", "canonical"),
    [
        ("flat", "flat"),
        ("FLAT", "flat"),
        ("flat,engine=numpy", "flat,engine=numpy"),
        ("faiss", "flat,engine=faiss"),
        ("hnsw", "hnsw:32,ef=128,efc=200"),
        ("hnsw:16", "hnsw:16,ef=128,efc=200"),
        (" hnsw:32 , ef = 256 ", "hnsw:32,ef=256,efc=200"),
        ("hnsw:32,efc=80,ef=16", "hnsw:32,ef=16,efc=80"),
        ("mih", "mih:4,nflip=1"),
        ("mih:8,nflip=0", "mih:8,nflip=0"),
        ("ivf", "ivf:1024,nprobe=8"),
        ("ivf:64,nprobe=3", "ivf:64,nprobe=3"),
    ],
)
def test_backend_strings_are_read_into_a_canonical_form(spec, canonical):
    assert str(parse_backend(spec)) == canonical
    assert str(parse_backend(canonical)) == canonical


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("annoy", "unknown kind 'annoy'"),
        ("", "unknown kind ''"),
        ("hnsw:", "whole number M >= 2"),
        ("hnsw:abc", "whole number M >= 2"),
        ("hnsw:1", "whole number M >= 2"),
        ("hnsw:-3", "whole number M >= 2"),
        ("mih:0", "whole number tables >= 1"),
        ("ivf:0", "whole number lists >= 1"),
        ("ivf:16,nprobe=0", "nprobe=0 must be a whole number >= 1"),
        ("ivf:16,ef=4", "ivf has no option 'ef'"),
        ("flat:3", "flat takes no number"),
        ("hnsw:32,ef", "name=value"),
        ("hnsw:32,=5", "name=value"),
        ("hnsw:32,ef=0", "ef=0 must be a whole number >= 1"),
        ("hnsw:32,ef=1.5", "must be a whole number"),
        ("hnsw:32,nflip=1", "hnsw has no option 'nflip'"),
        ("hnsw:32,ef=8,ef=9", "given twice"),
        ("mih:4,nflip=-1", "must be a whole number >= 0"),
        ("flat,engine=gpu", "must be one of auto, faiss, numpy"),
        (32, "must be a string"),
    ],
)
def test_malformed_backend_strings_are_refused_with_the_rule(spec, message):
    with pytest.raises(InputError, match=message) as error:
        Index(64, backend=spec)
    assert "\n" not in str(error.value)


@needs_faiss
def test_multi_hash_tables_must_leave_between_1_and_64_bits_each():
    with pytest.raises(InputError, match="65 hash tables over 64-bit codes give 0 bits per table"):
        Index(64, "mih:65")
    with pytest.raises(InputError, match="1 hash tables over 128-bit codes give 128 bits"):
        Index(128, "mih:1")
    assert Index(64, "mih:64").backend == "mih:64,nflip=1"


# ---------------------------------------------------------------------------------------------- exact flat


@needs_faiss
def test_installed_faiss_keeps_ties_in_insertion_order_so_flat_runs_on_it():
    assert faiss_flat_keeps_ties()
    assert Index(64).engine == "faiss-flat"
    assert Index(64, "flat,engine=numpy").engine == "numpy"


@needs_faiss
@pytest.mark.parametrize("k", [1, 10, 2048, 2049])  # 2049: deeper than faiss's heaps are used for
@pytest.mark.parametrize("n_queries", [1, 5])
def test_flat_engines_agree_exactly_across_faiss_scan_blocks(rng, k, n_queries):
    # 70,000 one-byte codes of 4 values: every distance is shared by ~17,000 codes, across faiss's 65,536-code blocks.
    database = (rng.integers(0, 4, size=(70_000, 1)) * 0x55).astype(np.uint8)
    queries = rng.integers(0, 256, size=(n_queries, 1)).astype(np.uint8)
    ids = rng.permutation(70_000) + 10
    results = []
    for engine in ("numpy", "faiss"):
        index = Index(8, f"flat,engine={engine}")
        index.add_packed(database, ids)
        results.append(index.search_packed(queries, k))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
    first_distance = results[0][0][:, :1]
    tied = ids[np.flatnonzero((np.unpackbits(database ^ queries[0], axis=1).sum(1)) == first_distance[0, 0])]
    np.testing.assert_array_equal(results[0][1][0, : min(k, tied.size)], tied[: min(k, tied.size)])


@needs_faiss
def test_faiss_search_leaves_the_callers_thread_setting_alone(rng):
    import faiss

    before = faiss.omp_get_max_threads()
    index = Index(16, "hnsw:8")
    index.add(np.where(rng.random((300, 16)) < 0.5, -1, 1))
    index.search(np.ones((1, 16)), 3)
    Index(16).add(np.ones((2, 16)))
    assert faiss.omp_get_max_threads() == before


# ---------------------------------------------------------------------------------------------- approximate


@needs_faiss
@pytest.mark.parametrize(("spec", "minimum"), [("hnsw:16,ef=64", 0.97), ("mih:4,nflip=2", 0.97),
                                               ("ivf:30,nprobe=3", 0.97)])
def test_approximate_backends_find_nearly_all_exact_neighbours(problem, spec, minimum):
    database, queries, exact = problem
    index = Index(64, spec)
    index.add(database, ids=np.arange(2000) * 7 + 3)
    found = index.search(queries, 10)
    id_recall, distance_recall = recalls(found, exact)
    assert id_recall >= minimum and distance_recall >= minimum, (id_recall, distance_recall)
    distances = found[0]
    assert (np.diff(distances, axis=1) >= 0).all()  # nearest first
    assert not index.exact and index.engine == f"faiss-{spec[:spec.index(':')]}"


@needs_faiss
def test_multi_index_hashing_is_exact_within_its_pigeonhole_radius(problem):
    # With T tables and F flips, every code within T*(F+1)-1 bits is a candidate.
    database, queries, (exact_distances, exact_ids) = problem
    index = Index(64, "mih:4,nflip=1")
    index.add(database, ids=np.arange(2000) * 7 + 3)
    distances, ids = index.search(queries, 10)
    inside = exact_distances[:, -1] <= 4 * 2 - 1
    assert inside.sum() >= 10  # the check means something
    np.testing.assert_array_equal(distances[inside], exact_distances[inside])
    np.testing.assert_array_equal(ids[inside], exact_ids[inside])


@needs_faiss
def test_search_time_options_change_and_are_recorded(problem, tmp_path):
    database, queries, exact = problem
    index = Index(64, "hnsw:8,ef=4")
    index.add(database, ids=np.arange(2000) * 7 + 3)
    low = recalls(index.search(queries, 10), exact)[0]
    assert index.set_params(ef=128) is index and index.backend == "hnsw:8,ef=128,efc=200"
    assert recalls(index.search(queries, 10), exact)[0] > low
    with pytest.raises(InputError, match="efc is fixed when the hnsw index is built"):
        index.set_params(efc=100)
    with pytest.raises(InputError, match="hnsw has no option 'nflip'"):
        index.set_params(nflip=2)
    mih = Index(64, "mih:4,nflip=0")
    mih.add(database)
    assert mih.set_params(nflip=2).backend == "mih:4,nflip=2"
    index.save(tmp_path / "graph.bgidx")
    assert Index.load(tmp_path / "graph.bgidx").backend == "hnsw:8,ef=128,efc=200"


@needs_faiss
@pytest.mark.parametrize("spec", ["hnsw:8", "mih:4,nflip=2", "ivf:30,nprobe=4"])
def test_removal_rebuilds_and_removed_ids_are_never_returned(problem, spec):
    database, queries, _ = problem
    ids = np.arange(2000) * 7 + 3
    index = Index(64, spec)
    index.add(database, ids)
    assert index.remove_ids(ids[::2]) == 1000 and index.ntotal == 1000
    found_ids = index.search(queries, 10)[1]
    assert not np.isin(found_ids, ids[::2]).any()
    exact = Index(64)
    exact.add(database[1::2], ids[1::2])
    assert recalls(index.search(queries, 10), exact.search(queries, 10))[1] >= 0.95
    index.add(database[:1], [5])  # adding after a rebuild continues the positions
    assert 5 in index.search(database[:1], 3)[1][0]


@needs_faiss
@pytest.mark.parametrize("spec", ["hnsw:8", "mih:4", "ivf:2,nprobe=1"])
def test_results_beyond_what_was_found_are_marked_missing(rng, spec):
    index = Index(64, spec)
    index.add(np.where(rng.random((3, 64)) < 0.5, -1, 1), ids=[10, 20, 30])
    distances, ids = index.search(np.where(rng.random((2, 64)) < 0.5, -1, 1), 5)
    assert (ids[:, 3:] == -1).all() and (distances[:, 3:] == MISSING_DISTANCE).all()
    found = ids >= 0
    assert set(ids[found].tolist()) <= {10, 20, 30}
    assert (distances[found] <= 64).all() and (distances[~found] == MISSING_DISTANCE).all()


@needs_faiss
def test_ivf_scans_more_lists_for_more_recall_and_is_exact_when_it_scans_them_all(problem):
    database, queries, exact = problem
    index = Index(64, "ivf:64,nprobe=1")
    index.add(database, ids=np.arange(2000) * 7 + 3)
    one_list = recalls(index.search(queries, 10), exact)
    assert one_list[1] < 1.0  # one list misses some neighbours: the sweep below means something
    assert recalls(index.set_params(nprobe=8).search(queries, 10), exact)[1] > one_list[1]
    assert index.backend == "ivf:64,nprobe=8"
    found = index.set_params(nprobe=64).search(queries, 10)
    np.testing.assert_array_equal(found[0], exact[0])  # every list scanned: the exact distances


@needs_faiss
def test_ivf_needs_as_many_first_codes_as_lists_and_keeps_its_centroids_when_rebuilt(rng):
    codes = np.where(rng.random((300, 32)) < 0.5, -1, 1)
    index = Index(32, "ivf:500")
    with pytest.raises(InputError, match=r"needs at least 500 of them; got 300.*ivf:7"):
        index.add(codes)
    assert index.ntotal == 0
    index = Index(32, "ivf:50,nprobe=50")
    index.add(codes)
    def centroids():  # faiss's trained centroids, held by the IVF's quantizer
        return index._searcher._index.quantizer.reconstruct_n(0, 50)  # noqa: SLF001

    before = centroids()
    index.remove_ids(np.arange(0, 300, 3))
    np.testing.assert_array_equal(centroids(), before)
    index.add(codes[:10], ids=np.arange(1000, 1010))  # few codes: fine once trained
    distances, ids = index.search(codes[:10], 1)
    assert (distances[:, 0] == 0).all()


# ---------------------------------------------------------------------------------------------- persistence


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("n_bits", [12, 64])
def test_every_backend_round_trips_through_save_and_load_with_its_ids(tmp_path, rng, backend, n_bits):
    centers = np.where(rng.random((10, n_bits)) < 0.5, -1, 1)
    database, queries = clustered_codes(rng, 400, n_bits, centers), clustered_codes(rng, 20, n_bits, centers)
    ids = rng.permutation(10_000)[:400]
    index = Index(n_bits, backend)
    index.add(database[:300], ids[:300])
    index.add(database[300:], ids[300:])
    path = tmp_path / "codes.bgidx"
    index.save(path)
    loaded = Index.load(path)
    saved_backend = "flat" if backend.startswith("flat") else index.backend
    assert (loaded.n_bits, loaded.backend, loaded.ntotal) == (n_bits, saved_backend, 400)
    np.testing.assert_array_equal(loaded.ids, ids)
    np.testing.assert_array_equal(loaded.codes, pack_codes(database))
    for got, want in zip(loaded.search(queries, 12), index.search(queries, 12)):
        np.testing.assert_array_equal(got, want)
    exact = Index(n_bits, "flat,engine=numpy")
    exact.add(database, ids)
    for got, want in zip(Index.load(path, backend="flat").search(queries, 12), exact.search(queries, 12)):
        np.testing.assert_array_equal(got, want)


@needs_faiss
def test_loading_with_other_search_options_keeps_the_stored_graph(tmp_path, problem):
    database, queries, exact = problem
    index = Index(64, "hnsw:8,ef=16")
    index.add(database)
    index.save(tmp_path / "graph.bgidx")
    loaded = Index.load(tmp_path / "graph.bgidx", backend="hnsw:8,ef=200")
    assert loaded.backend == "hnsw:8,ef=200,efc=200"
    for got, want in zip(loaded.search(queries, 10), index.set_params(ef=200).search(queries, 10)):
        np.testing.assert_array_equal(got, want)  # the same graph, searched with the new ef
    rebuilt = Index.load(tmp_path / "graph.bgidx", backend="mih:4")
    assert rebuilt.backend == "mih:4,nflip=1" and rebuilt.ntotal == 2000


def write_version_1(path, n_bits, codes, ids, backend):
    """A file as bganhash wrote them before backend strings (format version 1): header, name, codes, ids, sha256."""
    name = backend.encode()
    body = struct.pack("<8sIIQH", b"BGANIDX\x00", 1, n_bits, len(ids), len(name)) + name
    body += pack_codes(codes).tobytes() + np.asarray(ids, "<i8").tobytes()
    path.write_bytes(body + hashlib.sha256(body).digest())


@pytest.mark.parametrize("stored", ["flat", "faiss"])
def test_version_1_files_still_load(tmp_path, rng, stored):
    codes, queries = np.where(rng.random((50, 24)) < 0.5, -1, 1), np.where(rng.random((4, 24)) < 0.5, -1, 1)
    path = tmp_path / "old.bgidx"
    write_version_1(path, 24, codes, np.arange(50) * 2, stored)
    loaded = Index.load(path)
    assert (loaded.backend, loaded.n_bits, loaded.ntotal) == ("flat", 24, 50)
    expected = Index(24, "flat,engine=numpy")
    expected.add(codes, np.arange(50) * 2)
    for got, want in zip(loaded.search(queries, 7), expected.search(queries, 7)):
        np.testing.assert_array_equal(got, want)
    loaded.save(path)  # re-saved in the current version, readable again
    assert struct.unpack_from("<I", path.read_bytes(), 8)[0] == 2 and Index.load(path).ntotal == 50
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(InputError, match="truncated"):
        Index.load(path)


@needs_faiss
def test_a_damaged_graph_is_refused(tmp_path, problem):
    database, _, _ = problem
    index = Index(64, "hnsw:8")
    index.add(database)
    path = tmp_path / "graph.bgidx"
    index.save(path)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x10  # inside faiss's bytes: the checksum catches it
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="checksum"):
        Index.load(path)


@needs_faiss
def test_without_faiss_graph_backends_are_refused_and_their_files_searched_exactly(tmp_path, problem, monkeypatch):
    database, queries, exact = problem
    index = Index(64, "hnsw:8")
    index.add(database, ids=np.arange(2000) * 7 + 3)
    index.save(tmp_path / "graph.bgidx")
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(InputError, match="pip install faiss-cpu"):
        Index(64, "hnsw:32")
    with pytest.raises(InputError, match='backend="flat"'):
        Index.load(tmp_path / "graph.bgidx")
    fallback = Index.load(tmp_path / "graph.bgidx", backend="flat")
    assert fallback.engine == "numpy"
    for got, want in zip(fallback.search(queries, 10), exact):
        np.testing.assert_array_equal(got, want)
    assert Index(64).engine == "numpy"  # the default needs no faiss
