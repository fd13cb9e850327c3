"""Index directories: build, load, search, update, and survive crashes and corruption."""

from __future__ import annotations

import fcntl
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bganhash._validation import InputError
from bganhash.codes import unpack_codes
from bganhash.collection import (
    MANIFEST_FILE,
    PAUSE_AFTER_ENV,
    BuildConfig,
    BuildSummary,
    Collection,
    QueryImageError,
    build_collection,
    collection_bgan_settings,
    decode_query,
)
from bganhash.features.config import FeatureConfig
from bganhash.registry import load_hasher
from conftest import image_bytes, write_digits

N_BITS = 16
FEATURES = FeatureConfig(image_size=32, batch_size=64)
CONFIG = BuildConfig(method="lsh", n_bits=N_BITS, thumbnail_size=24)  # LSH trains instantly; ITQ is tested below


def build(photos: Path, out: Path, **kwargs) -> object:
    return build_collection(photos, out, config=CONFIG, feature_config=FEATURES, progress=False, **kwargs)


def popcount_distances(query: np.ndarray, database: np.ndarray) -> np.ndarray:
    """Hamming distances between one {-1,+1} code and each database code, counted bit by bit."""
    return (query[None, :] != database).sum(axis=1)


def make_photos(folder: Path) -> Path:
    """The `photos` fixture's folder: 40 digits (32x32, in even/ and odd/), a broken JPEG and a text file."""
    write_digits(folder, range(40), by_parity=True)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (folder / "notes.txt").write_text("not an image, not even listed")
    return folder


@pytest.fixture
def built(photos, tmp_path) -> tuple[Path, Path]:
    """A fresh index of `photos`, for tests that change the folder or the index."""
    out = tmp_path / "photos.index"
    build(photos, out)
    return photos, out


@pytest.fixture
def copied(shared, tmp_path) -> tuple[Path, Path]:
    """A private copy of the shared index (same photo folder, left unchanged), for tests that write to it."""
    import shutil

    photos, index = shared
    return photos, Path(shutil.copytree(index, tmp_path / "copy.index"))


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> tuple[Path, Path]:
    """One index for the tests that only read it."""
    base = tmp_path_factory.mktemp("shared")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BGANHASH_CACHE", str(base / "cache"))
        photos = make_photos(base / "photos")
        build(photos, base / "photos.index")
    return photos, base / "photos.index"


def test_build_writes_a_loadable_index_with_relative_paths_and_thumbnails(shared):
    photos, out = shared
    with Collection.load(out) as collection:
        assert len(collection) == 40
        assert sorted(collection.paths) == sorted(p.relative_to(photos).as_posix() for p in photos.rglob("*.png"))
        assert collection.n_bits == N_BITS and collection.manifest["method"] == "lsh"
        assert collection.codes.shape == (40, N_BITS // 8) and collection.codes.dtype == np.uint8
        thumbnail = Image.open(io.BytesIO(collection.thumbnail(int(collection.ids[3]))))
        assert thumbnail.format == "JPEG" and max(thumbnail.size) == 24
        report = collection.report
        assert report["unreadable"][0]["path"] == "broken.jpg" and report["trained"] and report["n_images"] == 40


def test_stored_codes_are_the_hasher_codes_of_the_features(shared):
    from bganhash.codes import pack_codes
    from bganhash.datasets.base import Dataset, FileSource
    from bganhash.features.extract import extract_features

    photos, out = shared
    with Collection.load(out) as collection:
        dataset = Dataset("check", FileSource(photos, collection.paths), collection.paths)
        expected = pack_codes(collection.hasher.encode(extract_features(dataset, FEATURES, cache=False)))
        np.testing.assert_array_equal(collection.codes, expected)


def test_search_by_file_finds_the_image_itself_first_and_reranks_hamming_candidates(shared):

    photos, out = shared
    with Collection.load(out) as collection:
        assert collection.reranked
        target = 7
        image = decode_query((photos / collection.paths[target]).read_bytes())
        matches = collection.search_images([image], k=40)[0]
        assert (matches[0].id, matches[0].path, matches[0].distance) == (int(collection.ids[target]),
                                                                           collection.paths[target], 0)
        assert matches[0].score > 0.999
        scores = [m.score for m in matches]
        assert scores == sorted(scores, reverse=True)  # the second stage orders by similarity
        codes = unpack_codes(collection.codes, N_BITS)
        oracle = popcount_distances(codes[target], codes)
        by_id = {int(i): d for i, d in zip(collection.ids, oracle)}
        assert all(by_id[m.id] == m.distance for m in matches)  # each result still reports its Hamming distance
        hamming_only = collection.search_codes(collection.encode_images([image]), k=40)[0]
        assert [m.distance for m in hamming_only] == sorted(by_id.values()) and hamming_only[0].score is None
        collection.candidates = 5  # re-ranking only reorders the Hamming candidates
        top = collection.search_images([image], k=5)[0]
        assert sorted(m.distance for m in top) == sorted(by_id.values())[:5]


def test_search_by_id_equals_search_by_its_stored_code(shared):
    _, out = shared
    with Collection.load(out) as collection:
        image_id = int(collection.ids[5])
        by_id = collection.search_ids([image_id], k=5)[0]
        assert by_id[0].id == image_id and by_id[0].distance == 0
        scores = [m.score for m in by_id]  # re-ranked: ordered by similarity, not by Hamming distance
        assert len(by_id) == 5 and scores == sorted(scores, reverse=True)
        by_code = collection.search_codes(unpack_codes(collection.codes[[5]], N_BITS), k=5)[0]
        assert [m.distance for m in by_code] == sorted(m.distance for m in by_code)
        assert by_code[0].distance == 0


@pytest.mark.parametrize("bad_id", [-1, 10_000, "3", 2.0, True])
def test_unknown_or_non_integer_ids_are_refused(shared, bad_id):
    _, out = shared
    with Collection.load(out) as collection, pytest.raises(InputError, match="id"):
        collection.search_ids([bad_id], k=3)


def test_k_larger_than_the_collection_returns_every_image(shared):
    _, out = shared
    with Collection.load(out) as collection:
        assert len(collection.search_ids([int(collection.ids[0])], k=1000)[0]) == 40


def test_update_adds_new_drops_gone_and_reencodes_changed_images_keeping_ids(built):
    photos, out = built
    with Collection.load(out) as before:
        old_ids = dict(zip(before.paths, before.ids.tolist()))
        old_model = before.manifest["model"]
    write_digits(photos, range(40, 45), by_parity=True)
    (photos / "odd" / "0001.png").unlink()
    (photos / "even" / "0002.png").unlink()
    changed = photos / "odd" / "0003.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(changed)
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    summary = build(photos, out, update=True)
    assert (summary.added, summary.removed, summary.unchanged, summary.n_images) == (6, 3, 37, 43)
    assert [path for path, _ in summary.unreadable] == ["broken.jpg"]
    with Collection.load(out) as after:
        new_ids = dict(zip(after.paths, after.ids.tolist()))
        assert after.manifest["model"] == old_model and after.generation == 2
        assert "odd/0001.png" not in new_ids and "even/0002.png" not in new_ids
        unchanged = set(old_ids) - {"odd/0001.png", "even/0002.png", "odd/0003.png"}
        assert all(new_ids[p] == old_ids[p] for p in unchanged)
        assert new_ids["odd/0003.png"] > max(old_ids.values())
        assert after.search_ids([new_ids["even/0042.png"]], k=1)[0][0].path == "even/0042.png"
        assert len(after.thumbnail(new_ids["even/0042.png"])) > 0
        assert len(after.thumbnail(new_ids["even/0000.png"])) > 0
    assert_only_referenced_files(out)


def assert_only_referenced_files(out: Path) -> None:
    """Nothing but the manifest, the lock and the files the manifest lists: old generations were deleted."""
    referenced = set(json.loads((out / MANIFEST_FILE).read_text())["files"])
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert on_disk == referenced | {MANIFEST_FILE, ".lock"}


def test_update_with_nothing_new_keeps_every_code(copied):
    photos, out = copied
    with Collection.load(out) as before:
        codes, ids = before.codes.copy(), before.ids.copy()
    summary = build(photos, out, update=True)
    assert (summary.added, summary.removed, summary.unchanged) == (0, 0, 40)
    with Collection.load(out) as after:
        np.testing.assert_array_equal(after.codes, codes)
        np.testing.assert_array_equal(after.ids, ids)


def test_rebuilding_without_update_or_from_another_folder_is_refused(copied, tmp_path):
    photos, out = copied
    with pytest.raises(InputError, match="--update"):
        build(photos, out)
    other = tmp_path / "other"
    write_digits(other, range(3), by_parity=True)
    with pytest.raises(InputError, match="update it from the same folder"):
        build(other, out, update=True)


def test_an_output_folder_holding_other_files_is_refused(photos, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("do not touch")
    with pytest.raises(InputError, match="not a bganhash index"):
        build(photos, out)
    assert (out / "thesis.tex").read_text() == "do not touch"


def test_a_folder_without_readable_images_is_refused(tmp_path):
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"nope")
    with pytest.raises(InputError, match="could be read"):
        build(folder, tmp_path / "junk.index")
    assert not (tmp_path / "junk.index").exists(), "a failed first build leaves nothing behind"


def test_a_zip_collection_is_indexed_updated_and_served_from_the_zip(tmp_path):
    import zipfile

    folder = tmp_path / "loose"
    written = write_digits(folder, range(12), by_parity=True)
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in written[:10]:
            zipped.write(path, f"album/{path.relative_to(folder).as_posix()}")
    out = tmp_path / "zip.index"
    assert build(archive, out).n_images == 10
    with Collection.load(out) as collection:
        assert (
            collection.original(int(collection.ids[0])) == (folder / collection.paths[0].split("/", 1)[1]).read_bytes()
        )
    with zipfile.ZipFile(archive, "a") as zipped:
        zipped.write(written[10], "album/extra.png")
    summary = build(archive, out, update=True)
    assert (summary.added, summary.unchanged) == (1, 10)


def test_an_itq_index_and_a_given_model_give_the_same_codes(photos, tmp_path):
    out = tmp_path / "itq.index"
    build_collection(photos, out, config=BuildConfig(method="itq", n_bits=N_BITS), feature_config=FEATURES,
                     progress=False)
    with Collection.load(out) as first:
        model_dir = out / first.manifest["model"]
        codes = dict(zip(first.paths, first.codes.tolist()))
    second = tmp_path / "again.index"
    build_collection(photos, second, model=model_dir, feature_config=FEATURES, progress=False)
    with Collection.load(second) as collection:
        assert collection.manifest["method"] == "itq"
        assert all(codes[p] == c for p, c in zip(collection.paths, collection.codes.tolist()))


def test_a_second_writer_is_refused_while_one_holds_the_lock(copied):
    photos, out = copied
    with open(out / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        with pytest.raises(InputError, match="another process"):
            build(photos, out, update=True)


@pytest.mark.parametrize("damage", ["flip_codes", "truncate_items", "foreign_thumbs", "drop_model", "garble_manifest",
                                    "foreign_manifest", "future_manifest", "escaping_manifest"])
def test_corrupted_or_foreign_files_are_refused_with_a_clear_message(copied, damage):
    _, out = copied
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    if damage == "flip_codes":
        path = out / manifest["codes"]
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "truncate_items":
        path = out / manifest["items"]
        path.write_bytes(path.read_bytes()[:-20])
    elif damage == "foreign_thumbs":
        next(out.glob("thumbs-*.bin")).write_bytes(b"GIF89a" + b"\0" * 100)
    elif damage == "drop_model":
        (out / manifest["model"] / "hasher.safetensors").unlink()
    elif damage == "garble_manifest":
        (out / MANIFEST_FILE).write_text('{"format": "bganhash-collection", "gener')
    elif damage == "foreign_manifest":
        (out / MANIFEST_FILE).write_text(json.dumps({"name": "my-app", "version": "1.0"}))
    elif damage == "future_manifest":
        (out / MANIFEST_FILE).write_text(json.dumps({**manifest, "format_version": 99}))
    elif damage == "escaping_manifest":
        (out / MANIFEST_FILE).write_text(json.dumps({**manifest, "items": "../../etc/passwd"}))
    expected = {"flip_codes": "checksum", "truncate_items": "checksum", "foreign_thumbs": "checksum",
                "drop_model": "missing", "garble_manifest": "corrupted", "foreign_manifest": "not a bganhash index",
                "future_manifest": "format_version=99", "escaping_manifest": "not the index's own"}[damage]
    with pytest.raises(InputError, match=expected):
        Collection.load(out)


def test_a_directory_that_is_not_an_index_is_refused(tmp_path):
    with pytest.raises(InputError, match="not a bganhash index"):
        Collection.load(tmp_path)
    with pytest.raises(InputError, match="not an index directory"):
        Collection.load(tmp_path / "missing.index")


def test_model_weights_are_safetensors_and_json_only(shared):
    _, out = shared
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    model_files = sorted(p.name for p in (out / manifest["model"]).iterdir())
    assert model_files == ["hasher.json", "hasher.safetensors"]
    assert type(load_hasher(out / manifest["model"])).__name__ == "LSH"


def test_original_files_are_served_only_from_inside_the_root(shared, tmp_path):
    photos, out = shared
    with Collection.load(out) as collection:
        first = int(collection.ids[0])
        assert collection.original(first) == (photos / collection.paths[0]).read_bytes()
        collection.paths[0] = "../../etc/passwd"  # a tampered path never leaves the root
        with pytest.raises(InputError, match="inside"):
            collection.original(first)


_KILLED_UPDATE = textwrap.dedent("""
    import sys
    from bganhash.collection import BuildConfig, build_collection
    from bganhash.features.config import FeatureConfig
    build_collection(sys.argv[1], sys.argv[2], update=True, progress=False,
                     config=BuildConfig(method="lsh", n_bits=16), feature_config=FeatureConfig(image_size=32))
""")


@pytest.mark.slow
@pytest.mark.parametrize("files_before_kill", [1, 2, 3, 4])
def test_an_update_killed_mid_write_leaves_the_previous_version_loadable(built, files_before_kill):
    photos, out = built
    with Collection.load(out) as before:
        paths, codes = list(before.paths), before.codes.copy()
    write_digits(photos, range(40, 50), by_parity=True)
    old_files = set(os.listdir(out))
    env = {**os.environ, PAUSE_AFTER_ENV: str(files_before_kill)}
    process = subprocess.Popen([sys.executable, "-c", _KILLED_UPDATE, str(photos), str(out)], env=env)
    try:
        deadline = time.monotonic() + 120
        while len(_new_generation_files(out, old_files)) < files_before_kill:
            assert process.poll() is None, "the update ended before it could be killed"
            assert time.monotonic() < deadline, "the update wrote nothing in time"
            time.sleep(0.05)
        time.sleep(0.2)
        assert len(_new_generation_files(out, old_files)) == files_before_kill, "the update did not stall there"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    with Collection.load(out) as survivor:
        assert survivor.generation == 1 and survivor.paths == paths
        np.testing.assert_array_equal(survivor.codes, codes)
    summary = build(photos, out, update=True)
    assert (summary.added, summary.n_images) == (10, 50)
    assert_only_referenced_files(out)


def _new_generation_files(out: Path, old_files: set[str]) -> list[str]:
    """Completed new files (temporaries excluded) that the running update has written so far."""
    return [name for name in os.listdir(out) if name not in old_files and not name.startswith(".")]


@pytest.mark.parametrize("payload, status, message", [
    (b"", 400, "empty"),
    (b"%PDF-1.4 not an image", 415, "not an image"),
    (b"<svg xmlns='http://www.w3.org/2000/svg'/>", 415, "not an image"),
])
def test_decode_query_names_the_problem(payload, status, message):
    with pytest.raises(QueryImageError, match=message) as caught:
        decode_query(payload)
    assert caught.value.status == status


def test_decode_query_refuses_truncated_bombs_big_files_and_odd_modes():
    png = image_bytes(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    with pytest.raises(QueryImageError, match="truncated") as truncated:
        decode_query(png[: len(png) // 2])
    assert truncated.value.status == 400
    with pytest.raises(QueryImageError, match="pixels") as bomb:
        decode_query(png, max_pixels=64 * 63)
    assert bomb.value.status == 413
    with pytest.raises(QueryImageError, match="bytes") as big:
        decode_query(png, max_bytes=len(png) - 1)
    assert big.value.status == 413
    with pytest.raises(QueryImageError, match="mode 'LAB'") as mode:
        decode_query(image_bytes(Image.new("LAB", (8, 8)), "TIFF"))
    assert mode.value.status == 415
    assert decode_query(png).shape == (64, 64, 3)


@pytest.mark.slow
def test_a_bgan_index_trains_saves_and_searches(tmp_path):
    photos, out = tmp_path / "digits", tmp_path / "bgan.index"
    write_digits(photos, range(120), by_parity=True)
    short = {"epochs_per_stage": 2, "beta_schedule": [1.0, 10.0], "batch_size": 16}
    summary = build_collection(photos, out, config=BuildConfig(method="bgan", n_bits=32, hasher_params=short),
                               feature_config=FEATURES, progress=False)
    assert summary.trained and summary.n_images == 120
    with Collection.load(out) as collection:
        assert collection.manifest["method"] == "bgan" and type(collection.hasher).__name__ == "BGANHasher"
        assert collection.hasher.config_["neighborhood"]["k1"] == 3  # scaled down for a small collection
        assert collection.hasher.networks_.generator is not None  # the whole BGAN below 5,000 images
        assert sorted(p.name for p in (out / collection.manifest["model"]).iterdir()) == ["hasher.json",
                                                                                          "hasher.safetensors"]
        assert len(np.unique(collection.codes, axis=0)) >= 40, "the codes collapsed to a few values"
        image = decode_query((photos / collection.paths[9]).read_bytes())
        assert collection.search_images([image], k=3)[0][0].distance == 0


@pytest.mark.parametrize("n_images, k, epochs",
                         [(40, 3, 400), (999, 4, 50), (1_000, 10, 50), (2_000, 20, 25), (4_999, 49, 10),
                          (5_000, 50, 10), (59_000, 50, 5)])
def test_bgan_neighborhood_shrinks_and_schedule_grows_with_small_collections(n_images, k, epochs):
    settings = collection_bgan_settings(n_images)
    assert (settings["k1"], settings["k2"], settings["epochs_per_stage"]) == (k, k, epochs)
    # the codes of a pseudo-class spread, the more the larger K (RESULTS.md, issue 12)
    generative = k < 50  # from K = 50 (5,000 images) on, l_N and the spread term only (RESULTS.md, issue 12)
    assert settings["use_content"] == settings["use_adversarial"] == generative
    # from 1,000 images on, training starts from ITQ's codes with K >= 10 and the spread term weighs half
    # (RESULTS.md, issue 12)
    itq_start = n_images >= 1_000
    assert settings["bit_spread_weight"] == pytest.approx((0.5 if itq_start else 1.0) * k / 50)
    assert settings["hash_init"] == ("itq" if itq_start else "random")
    steps = settings["epochs_per_stage"] * 4 * -(-n_images // 128)
    assert steps >= 1_600  # every collection gets at least the steps 10,000 images get


@pytest.mark.slow
def test_a_first_build_killed_mid_write_can_simply_be_run_again(photos, tmp_path):
    out = tmp_path / "first.index"
    env = {**os.environ, PAUSE_AFTER_ENV: "3"}  # model, thumbnails, codes: then it stalls
    process = subprocess.Popen([sys.executable, "-c", _KILLED_UPDATE.replace("update=True", "update=False"),
                                str(photos), str(out)], env=env)
    try:
        deadline = time.monotonic() + 120
        while not (out.exists() and list(out.glob("codes-*"))):
            assert process.poll() is None and time.monotonic() < deadline, "the build did not reach its codes"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    with pytest.raises(InputError, match="manifest.json is missing"):
        Collection.load(out)
    summary = build(photos, out)
    assert summary.generation == 1 and summary.n_images == 40
    assert_only_referenced_files(out)


def build_with_backend(photos: Path, out: Path, backend: str | None, **kwargs) -> object:
    config = BuildConfig(method="lsh", n_bits=N_BITS, thumbnail_size=24, backend=backend)
    return build_collection(photos, out, config=config, feature_config=FEATURES, progress=False, **kwargs)


@pytest.mark.parametrize(("backend", "canonical"),
                         [("hnsw:8,ef=32", "hnsw:8,ef=32,efc=200"), ("mih:2", "mih:2,nflip=1")])
def test_an_approximate_backend_is_saved_with_the_index_and_kept_by_updates(photos, tmp_path, backend, canonical):
    pytest.importorskip("faiss")
    out = tmp_path / "graph.index"
    assert build_with_backend(photos, out, backend).backend == canonical
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["backend"] == canonical and manifest["index"] in manifest["files"]
    with Collection.load(out) as collection:
        assert collection.backend == canonical and collection.index.backend == canonical
        first = int(collection.ids[5])
        assert collection.search_ids([first], k=3)[0][0].id == first
    (photos / "odd" / "0001.png").unlink()
    assert build_with_backend(photos, out, None, update=True).backend == canonical  # an update keeps it
    with Collection.load(out) as collection:
        assert collection.index.backend == canonical and collection.index.ntotal == 39
    build_with_backend(photos, out, "flat", update=True)
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["backend"] == "flat" and "index" not in manifest
    assert_only_referenced_files(out)  # the graph of the previous generation is gone


def test_a_version_1_manifest_without_a_backend_loads_as_flat(copied):
    photos, out = copied
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    del manifest["backend"], manifest["sha256"]  # version 1 had neither
    (out / MANIFEST_FILE).write_text(json.dumps({**manifest, "format_version": 1}))
    with Collection.load(out) as collection:
        assert collection.backend == "flat" and collection.index.exact
        assert len(collection.search_ids([int(collection.ids[0])], k=5)[0]) == 5
    assert build(photos, out, update=True).backend == "flat"


def test_a_malformed_backend_is_refused_before_any_work(photos, tmp_path):
    with pytest.raises(InputError, match="unknown kind 'annoy'"):
        build_with_backend(photos, tmp_path / "x.index", "annoy")
    assert not (tmp_path / "x.index").exists()


def test_the_build_summary_checks_the_codes_without_labels():
    from bganhash.collection.generation import _check_codes

    summary = BuildSummary(path="x", generation=1, n_images=4, added=4, removed=0, unchanged=0, n_bits=12)
    _check_codes(np.packbits(np.array([[1] * 6 + [0] * 6] * 4 + [[0] * 12]), axis=1), summary)
    assert summary.distinct_codes == 2 and summary.bit_balance == (0.0, 0.8)
    assert any("collapse: 2 distinct codes for 5 images" in w for w in summary.warnings)
    assert any("6 of 12 bits are the same for every image" in w for w in summary.warnings)
    healthy = BuildSummary(path="x", generation=1, n_images=4, added=4, removed=0, unchanged=0, n_bits=2)
    _check_codes(np.packbits(np.array([[0, 0], [0, 1], [1, 0], [1, 1]]), axis=1), healthy)
    assert healthy.distinct_codes == 4 and healthy.bit_balance == (0.5, 0.5) and not healthy.warnings
