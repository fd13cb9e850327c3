"""Issue 15's file and input attacks: every saved file verified (model, pipeline, collection), one link
policy, no hang on a named pipe, and clear errors for hostile .npy files, huge or complex features and huge k."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest

from bganhash._io import UnverifiedFileWarning, file_entry, write_verified_json
from bganhash._validation import InputError
from bganhash.collection import MANIFEST_FILE, BuildConfig, Collection, build_collection
from bganhash.datasets.folder import list_image_files, scan_image_files
from bganhash.features.cache import load_features
from bganhash.features.config import FeatureConfig
from bganhash.hashers import ITQ, LSH, PCAH, SH, Hasher, SphericalHashing
from bganhash.index import Index
from bganhash.pipeline import PIPELINE_FILE, ImagePipeline
from conftest import write_digits

FEATURES = FeatureConfig(image_size=32, batch_size=64)


def fake_features(dataset, config=None, **_):
    """Stand-in for the backbone: 8x8 pixels as features (the attacks are on files, not on features)."""
    return (dataset.to_array(size=8).reshape(len(dataset), -1) / 255.0).astype(np.float32)


@pytest.fixture
def no_backbone(monkeypatch):
    monkeypatch.setattr("bganhash.features.extract.extract_features", fake_features)


def build_small(folder: Path, out: Path, **kwargs):
    """An LSH index of `folder` with the stand-in features."""
    config = BuildConfig(method="lsh", n_bits=16, thumbnail_size=16)
    return build_collection(folder, out, config=config, feature_config=FEATURES, progress=False, **kwargs)


@pytest.fixture
def collection_dir(no_backbone, tmp_path) -> Path:
    write_digits(tmp_path / "photos", range(12))
    out = tmp_path / "photos.index"
    build_small(tmp_path / "photos", out)
    return out


@pytest.fixture
def pipeline_dir(tmp_path, rng) -> tuple[Path, np.ndarray]:
    X = rng.standard_normal((60, 16)).astype(np.float32)
    ImagePipeline(ITQ(8, random_state=0).fit(X), FEATURES).save(tmp_path / "model")
    return tmp_path / "model", X


def edit_json(path: Path, change) -> None:
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


# ---- item 2: every file of a model directory is verified ---------------------------------------------------


def test_a_flipped_byte_in_the_model_arrays_is_refused(pipeline_dir):
    model, _ = pipeline_dir
    data = bytearray((model / "hasher.safetensors").read_bytes())
    data[-3] ^= 0x01  # the last float of the rotation: it loads, and changes codes, without a checksum
    (model / "hasher.safetensors").write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"hasher.safetensors is corrupted.*checksum"):
        ImagePipeline.load(model)


@pytest.mark.parametrize("change", [
    lambda d: d["feature_config"].update(image_size=225),
    lambda d: d["feature_config"].update(resize="stretch"),
    lambda d: d["feature_config"].update(backbone="resnet50"),
])
def test_an_edited_feature_config_is_refused(pipeline_dir, change):
    model, _ = pipeline_dir
    edit_json(model / PIPELINE_FILE, change)
    with pytest.raises(InputError, match=r"pipeline.json is corrupted or was changed"):
        ImagePipeline.load(model)


def test_a_deleted_or_added_pipeline_file_is_refused(pipeline_dir, tmp_path, rng):
    model, X = pipeline_dir
    (model / PIPELINE_FILE).unlink()  # would silently fall back to the default features
    with pytest.raises(InputError, match="pipeline.json is missing"):
        ImagePipeline.load(model)
    bare = ITQ(8, random_state=0).fit(X).save(tmp_path / "bare")
    shutil.copy(tmp_path / "model" / "hasher.json", tmp_path / "unused.json")
    (bare / PIPELINE_FILE).write_text(json.dumps({"format": "bganhash-pipeline", "format_version": 1,
                                                  "feature_config": {"image_size": 225}}))
    with pytest.raises(InputError, match="not among the files"):
        ImagePipeline.load(bare)


@pytest.mark.parametrize("change, match", [
    (lambda d: d.pop("sha256"), "records a checksum, but it has none"),
    (lambda d: d.update(format_version=1), "does not match its checksum"),  # a downgrade to skip verification
    (lambda d: d.update(files={}), "does not list"),
    (lambda d: d["params"].update(n_bits=4), "does not match its checksum"),
])
def test_hasher_json_cannot_be_stripped_or_edited(pipeline_dir, change, match):
    model, _ = pipeline_dir
    edit_json(model / "hasher.json", change)
    if "does not list" in match:  # re-sealed: the emptied list itself is refused
        write_verified_json(model / "hasher.json", json.loads((model / "hasher.json").read_text()))
    with pytest.raises(InputError, match=match):
        Hasher.load(model)


def test_a_model_saved_before_checksums_loads_with_a_warning(pipeline_dir):
    model, X = pipeline_dir
    expected = ImagePipeline.load(model).encode_features(X)
    for name in ("hasher.json", PIPELINE_FILE):
        edit_json(model / name, lambda d: (d.pop("sha256"), d.pop("files", None), d.update(format_version=1)))
    with pytest.warns(UnverifiedFileWarning, match="without checksums"):
        loaded = ImagePipeline.load(model)
    np.testing.assert_array_equal(loaded.encode_features(X), expected)


# ---- item 2: the collection's manifest is verified -----------------------------------------------------------


@pytest.mark.parametrize("change, match", [
    (lambda m: m["feature_config"].update(image_size=225), "does not match its checksum"),
    (lambda m: m.update(files={}), "does not checksum"),
    (lambda m: m.update(generation="abc"), r"generation='abc' must be an integer"),
    (lambda m: m.pop("sha256"), "records a checksum, but it has none"),
    (lambda m: m.update(format_version=2), "does not match its checksum"),
    (lambda m: m.update(n_bits=[16]), "n_bits"),
])
def test_an_edited_manifest_is_refused(collection_dir, change, match):
    edit_json(collection_dir / MANIFEST_FILE, change)
    with pytest.raises(InputError, match=match) as caught:
        Collection.load(collection_dir)
    assert MANIFEST_FILE in str(caught.value)


def test_a_manifest_of_an_earlier_version_loads_unverified_and_an_update_verifies_it(collection_dir, no_backbone):
    model_name = json.loads((collection_dir / MANIFEST_FILE).read_text())["model"]
    metadata = collection_dir / model_name / "hasher.json"
    edit_json(metadata, lambda d: (d.pop("sha256"), d.pop("files"), d.update(format_version=1)))

    def as_version_2(manifest):
        manifest.pop("sha256")
        manifest["format_version"] = 2
        manifest["files"][f"{model_name}/hasher.json"] = file_entry(metadata)

    edit_json(collection_dir / MANIFEST_FILE, as_version_2)
    with pytest.warns(UnverifiedFileWarning):
        with Collection.load(collection_dir, verify=False) as collection:
            ids = collection.ids.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnverifiedFileWarning)
        build_small(collection_dir.parent / "photos", collection_dir, update=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnverifiedFileWarning)  # manifest and model are verified now
        with Collection.load(collection_dir) as collection:
            np.testing.assert_array_equal(collection.ids, ids)


def test_an_unverified_manifest_must_still_checksum_every_file_it_names(collection_dir):
    def strip(manifest):
        manifest.pop("sha256")
        manifest["format_version"] = 2
        manifest["files"] = {k: v for k, v in manifest["files"].items() if not k.startswith("thumbs-")}

    edit_json(collection_dir / MANIFEST_FILE, strip)
    with pytest.warns(UnverifiedFileWarning), pytest.raises(InputError, match="every thumbnail file"):
        Collection.load(collection_dir)


# ---- items 4 and 6: links out of the folder and non-files --------------------------------------------------


@pytest.fixture
def hostile_folder(tmp_path) -> Path:
    folder = tmp_path / "photos"
    write_digits(folder, range(8))
    write_digits(tmp_path / "outside", [9])
    os.symlink(tmp_path / "outside" / "0009.png", folder / "secret.png")
    os.symlink(folder / "0001.png", folder / "inside-link.png")
    os.symlink(tmp_path / "outside", folder / "linked-folder")
    os.mkfifo(folder / "pipe.jpg")
    return folder


def test_the_scan_follows_only_links_inside_the_folder_and_skips_pipes(hostile_folder):
    members, skipped = scan_image_files(hostile_folder)
    assert members == [f"{i:04d}.png" for i in range(8)] + ["inside-link.png"]
    reasons = dict(skipped)
    assert set(reasons) == {"secret.png", "linked-folder", "pipe.jpg"}
    assert "outside the folder" in reasons["secret.png"] and "named pipe" in reasons["pipe.jpg"]
    assert list_image_files(hostile_folder) == members


def test_index_does_not_hang_on_a_pipe_nor_index_an_outside_link(hostile_folder, no_backbone, tmp_path):
    def hang(*_):
        raise TimeoutError("bganhash index hangs")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(60)
    try:
        summary = build_small(hostile_folder, tmp_path / "x.index")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert summary.n_images == 9
    assert {path for path, _ in summary.unreadable} == {"secret.png", "linked-folder", "pipe.jpg"}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need POSIX")
def test_a_file_replaced_by_a_pipe_after_the_scan_is_refused_not_opened(tmp_path):
    from bganhash.datasets.base import FileSource

    write_digits(tmp_path / "photos", range(2))
    source = FileSource(tmp_path / "photos", ["0000.png", "0001.png"])
    (tmp_path / "photos" / "0001.png").unlink()
    os.mkfifo(tmp_path / "photos" / "0001.png")  # opening it for reading would block until a writer comes

    def hang(*_):
        raise TimeoutError("reading a named pipe blocked")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(20)
    try:
        for read in (source.read, source.digest, source.side, source.raw):
            with pytest.raises(InputError, match=r"0001\.png.*no longer a regular file"):
                read(1)
        assert source.read(0).shape[-1] == 3 and len(source.digest(0)) > 0
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_thumbnails_and_originals_of_a_link_out_of_the_root_are_refused(collection_dir, tmp_path):
    """An index built before the scan checked links may hold one: neither thumbnail nor original serves it."""
    photos = collection_dir.parent / "photos"
    write_digits(tmp_path / "outside", [3])
    (photos / "0003.png").unlink()
    os.symlink(tmp_path / "outside" / "0003.png", photos / "0003.png")
    with Collection.load(collection_dir) as collection:
        image_id = next(i for i in collection.ids if collection.path_of(int(i)) == "0003.png")
        with pytest.raises(InputError, match="outside"):
            collection.thumbnail(int(image_id))
        with pytest.raises(InputError, match="no longer a file inside"):
            collection.original(int(image_id))
        other = int(collection.ids[0] if image_id != collection.ids[0] else collection.ids[1])
        assert collection.thumbnail(other)[:2] == b"\xff\xd8" and collection.original(other)[:4] == b"\x89PNG"


# ---- item 9: hostile features and arguments -------------------------------------------------------------------


def _npy_with_header(path: Path, shape, descr="<f4", payload=b"") -> Path:
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    path.write_bytes(buffer.getvalue() + payload)
    return path


def test_a_header_claiming_a_huge_array_is_refused_before_reading(tmp_path):
    path = _npy_with_header(tmp_path / "huge.npy", (10**12, 64), payload=b"\0" * 256)
    tracemalloc.start()
    with pytest.raises(InputError, match=r"header claims shape \(1000000000000, 64\)"):
        load_features(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 10 * 2**20


@pytest.mark.parametrize("content, match", [
    (b"", "empty"),
    (b"\x93NUMPY\x01", "header is unreadable"),
    (b"PK\x03\x04 not numpy", "header is unreadable"),
])
def test_empty_and_garbled_npy_files_are_refused(tmp_path, content, match):
    (tmp_path / "f.npy").write_bytes(content)
    with pytest.raises(InputError, match=match):
        load_features(tmp_path / "f.npy")


def test_npy_files_of_other_kinds_are_refused(tmp_path):
    np.save(tmp_path / "c.npy", np.ones((4, 3), np.complex64))
    with pytest.raises(InputError, match="complex64"):
        load_features(tmp_path / "c.npy")
    np.save(tmp_path / "three.npy", np.ones((2, 3, 4), np.float32))
    with pytest.raises(InputError, match="3-D"):
        load_features(tmp_path / "three.npy")
    np.save(tmp_path / "objects.npy", np.array([[1, "a"]], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="real numbers"):
        load_features(tmp_path / "objects.npy")


@pytest.mark.parametrize("hasher", [ITQ, PCAH, SH, LSH, SphericalHashing])
def test_huge_and_complex_features_give_clear_errors(rng, hasher):
    X = rng.standard_normal((64, 16))
    with pytest.raises(InputError, match=r"as large as .*e\+30"):
        hasher(8, random_state=0).fit(X * 1e30)
    with pytest.raises(InputError, match="must be real"):
        hasher(8, random_state=0).fit(X + 1j)
    assert hasher(8, random_state=0).fit_encode(X * 1e11).shape == (64, 8)  # large but usable


def test_search_caps_k_at_the_index_size(rng):
    index = Index(64)
    index.add(np.where(rng.random((50, 64)) < 0.5, -1, 1))
    tracemalloc.start()
    distances, ids = index.search(np.ones((1, 64)), 10**8)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert distances.shape == ids.shape == (1, 50) and sorted(ids[0].tolist()) == list(range(50))
    assert peak < 10 * 2**20
