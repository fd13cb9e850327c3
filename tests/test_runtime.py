"""The inference runtime (ONNX Runtime / OpenVINO / torch), decoding at reduced size, the pipelined
extraction, the per-image feature cache and progress lines in logs."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

import bganhash.features.config as config_module
import bganhash.features.extract as extract_module
import bganhash.features.runtime as runtime
from bganhash import InputError
from bganhash._progress import LogProgress, progress_bar
from bganhash.datasets import load_dataset
from bganhash.datasets.images import decode_image
from bganhash.features.config import FeatureConfig
from bganhash.features.extract import compute_features, extract_features, features_of_images
from bganhash.features.image_cache import ImageFeatureCache, image_cache_dir
from conftest import write_digits

SMALL = FeatureConfig(image_size=64, batch_size=8)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def cifar_images(cifar10_zip, count: int) -> list[np.ndarray]:
    with zipfile.ZipFile(cifar10_zip) as archive:
        names = [n for n in archive.namelist() if n.endswith(".jpg")][:: 997][:count]
        return [np.asarray(Image.open(io.BytesIO(archive.read(n))).convert("RGB")) for n in names]


def test_onnx_runtime_agrees_with_eager_torch_on_real_images(cifar10_zip):
    pytest.importorskip("onnxruntime")
    images = cifar_images(cifar10_zip, 48)
    config = FeatureConfig(image_size=224, batch_size=16, runtime="onnxruntime")
    onnx = features_of_images(images, config)
    eager = features_of_images(images, FeatureConfig(image_size=224, batch_size=16, runtime="torch"))
    assert extract_module.engine_for(config).runtime == "onnxruntime"
    assert cosine_rows(onnx, eager).min() >= 0.9999
    np.testing.assert_allclose(onnx, eager, atol=1e-3)


def test_openvino_fp32_agrees_and_bf16_stays_close(cifar10_zip):
    pytest.importorskip("openvino")
    images = cifar_images(cifar10_zip, 16)
    eager = features_of_images(images, FeatureConfig(image_size=224, runtime="torch"))
    fp32 = features_of_images(images, FeatureConfig(image_size=224, runtime="openvino", precision="fp32"))
    bf16 = features_of_images(images, FeatureConfig(image_size=224, precision="bf16"))
    assert cosine_rows(fp32, eager).min() >= 0.9999
    assert cosine_rows(bf16, eager).min() >= 0.99


def test_int8_is_quantised_once_from_sample_photos_and_stays_close(cifar10_zip, monkeypatch):
    pytest.importorskip("openvino")
    from bganhash.features import quantize

    images = cifar_images(cifar10_zip, 16)
    fp32 = features_of_images(images, FeatureConfig(image_size=64, batch_size=8, precision="fp32"))
    int8 = features_of_images(images, FeatureConfig(image_size=64, batch_size=8, precision="int8"))
    cosine = cosine_rows(int8, fp32)
    assert cosine.mean() > 0.95 and not np.allclose(int8, fp32, atol=1e-3)  # close, and really int8
    path = quantize.quantized_model(runtime.exported_model("efficientnet_lite0", 64), 64)
    assert path.is_file() and "int8" in path.name
    monkeypatch.setattr(quantize, "_quantize", lambda *a: pytest.fail("quantised twice"))
    runtime.feature_engine.cache_clear()
    np.testing.assert_array_equal(features_of_images(images, FeatureConfig(image_size=64, batch_size=8,
                                                                           precision="int8")), int8)
    crops = quantize.calibration_pixels(32, count=4)
    assert crops.shape == (4, 32, 32, 3) and crops.dtype == np.float32 and 0 <= crops.min() < crops.max() <= 255


def test_export_is_cached_on_disk_and_keyed_by_weights_and_size(monkeypatch):
    pytest.importorskip("onnxruntime")
    path = runtime.exported_model("efficientnet_lite0", 64)
    assert path.is_file() and path.parent == runtime.runtime_cache_dir()
    assert f"-64px-{runtime.weights_fingerprint('efficientnet_lite0')}-" in path.name

    def no_export(*args, **kwargs):
        raise AssertionError("exported again although the cache holds the model")

    monkeypatch.setattr(runtime, "_export_onnx", no_export)
    assert runtime.exported_model("efficientnet_lite0", 64) == path
    assert not list(path.parent.glob("*.tmp"))  # written atomically, nothing left beside it


def test_auto_runtime_and_bad_choices(monkeypatch):
    resolve_runtime = config_module.resolve_runtime
    assert resolve_runtime("auto", "fp32") == "openvino"  # the faster one here (BENCHMARKS.md)
    assert resolve_runtime("onnxruntime", "fp32") == "onnxruntime"  # asked for by name: kept
    monkeypatch.setenv("BGANHASH_RUNTIME", "torch")
    assert resolve_runtime("auto", "fp32") == "torch"
    with pytest.raises(InputError, match="runtime='tensorrt' must be one of"):
        resolve_runtime("tensorrt", "fp32")
    with pytest.raises(InputError, match="precision=bf16 runs on OpenVINO"):
        resolve_runtime("torch", "bf16")
    with pytest.raises(InputError, match="precision=int8 runs on OpenVINO"):
        resolve_runtime("onnxruntime", "int8")
    with pytest.raises(InputError, match="runtime='jax' must be one of"):
        FeatureConfig(runtime="jax").validate()


def test_auto_precision_is_bf16_only_where_the_cpu_computes_it_natively(monkeypatch, tmp_path):
    from bganhash import _system

    native, emulated = tmp_path / "native", tmp_path / "emulated"
    native.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 amx_tile\n")
    emulated.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    assert _system.cpu_has_native_bf16(native) and not _system.cpu_has_native_bf16(emulated)
    assert not _system.cpu_has_native_bf16(tmp_path / "absent")

    monkeypatch.setattr(config_module, "cpu_has_native_bf16", lambda: False)
    assert config_module.resolve_precision("auto") == "fp32" and FeatureConfig().precision == "fp32"
    monkeypatch.setattr(config_module, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(config_module, "runtime_available", lambda name: True)
    assert FeatureConfig().precision == "bf16"  # resolved when made: saved configs record what ran
    assert FeatureConfig(precision="fp32").precision == "fp32"  # asked for by name: kept
    assert FeatureConfig(runtime="onnxruntime").precision == "fp32"  # bf16 runs on OpenVINO only
    monkeypatch.setenv("BGANHASH_RUNTIME", "torch")
    assert FeatureConfig().precision == "fp32"
    monkeypatch.delenv("BGANHASH_RUNTIME")
    monkeypatch.setattr(config_module, "runtime_available", lambda name: name != "openvino")
    assert FeatureConfig().precision == "fp32"  # OpenVINO not installed


def test_large_jpeg_decodes_at_reduced_size_close_to_full_decode(tmp_path, rng):
    smooth = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).resize((4000, 3000), Image.BILINEAR)
    path = tmp_path / "big.jpg"
    smooth.save(path, quality=92)
    reduced = decode_image(path, "big.jpg", min_side=224)
    full = decode_image(path, "big.jpg")
    assert full.shape == (3000, 4000, 3)
    assert min(reduced.shape[:2]) >= 224 and max(reduced.shape[:2]) <= 1000
    features = features_of_images([reduced, full], SMALL)
    assert cosine_rows(features[:1], features[1:])[0] > 0.99


def test_large_png_is_box_reduced_before_conversion(tmp_path):
    path = tmp_path / "big.png"
    Image.new("I;16", (3000, 2000), 30000).save(path)
    reduced = decode_image(path, "big.png", min_side=100)
    assert reduced.shape == (100, 150, 3) and reduced.dtype == np.uint8


def test_pipelined_extraction_equals_one_image_at_a_time(tmp_path):
    write_digits(tmp_path / "digits", range(21), size=40)
    dataset = load_dataset("folder", data=tmp_path / "digits")
    pipelined = compute_features(dataset, SMALL, progress=False)
    alone = np.concatenate([features_of_images([dataset.read_image(i)], SMALL) for i in range(len(dataset))])
    np.testing.assert_allclose(pipelined, alone, rtol=1e-5, atol=1e-5)
    subset = compute_features(dataset, SMALL, progress=False, indices=[20, 3])
    np.testing.assert_allclose(subset, alone[[20, 3]], rtol=1e-5, atol=1e-5)


def test_a_file_that_breaks_during_extraction_is_named(tmp_path):
    write_digits(tmp_path / "digits", range(12), size=40)
    dataset = load_dataset("folder", data=tmp_path / "digits")
    (tmp_path / "digits" / "0007.png").write_bytes(b"\x89PNG truncated")
    with pytest.raises(InputError, match="0007.png"):
        compute_features(dataset, SMALL, progress=False)


def test_per_image_cache_extracts_only_new_files(tmp_path, monkeypatch):
    write_digits(tmp_path / "a", range(10), size=40)
    write_digits(tmp_path / "b", range(5, 14), size=40)  # 5 files with the same content as in a/
    first = extract_features(load_dataset("folder", data=tmp_path / "a"), SMALL, cache="images", progress=False)
    asked: list[int] = []
    real = extract_module.compute_features

    def counting(dataset, config, progress=True, indices=None):
        asked.extend(indices)
        return real(dataset, config, progress, indices)

    monkeypatch.setattr(extract_module, "compute_features", counting)
    second_folder = load_dataset("folder", data=tmp_path / "b")
    second = extract_features(second_folder, SMALL, cache="images", progress=False)
    assert sorted(second_folder.locations[i] for i in asked) == [f"{i:04d}.png" for i in range(10, 14)]
    np.testing.assert_allclose(second[:5], first[5:], rtol=1e-6)
    assert len(ImageFeatureCache(image_cache_dir(SMALL))) == 14
    other = FeatureConfig(image_size=48, batch_size=8)
    assert image_cache_dir(other) != image_cache_dir(SMALL)  # other settings: other features


def test_damaged_shard_is_ignored_and_recomputed(tmp_path):
    write_digits(tmp_path / "a", range(4), size=40)
    dataset = load_dataset("folder", data=tmp_path / "a")
    good = extract_features(dataset, SMALL, cache="images", progress=False)
    for shard in image_cache_dir(SMALL).iterdir():
        shard.write_bytes(shard.read_bytes()[:100])
    np.testing.assert_allclose(extract_features(dataset, SMALL, cache="images", progress=False), good, rtol=1e-5)


def test_log_progress_prints_count_rate_and_eta(capsys, monkeypatch):
    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    bar = LogProgress(total=1000, desc="features", unit="img", interval=0.0)
    bar.update(250)
    line = capsys.readouterr().err.strip()
    assert line.startswith("features: 250/1,000 img (25%), ") and "img/s" in line and "ETA" in line
    assert bar.line(bar._started + 10.0) .startswith("features: 250/1,000 img (25%), 25.0 img/s, ETA 0:30")


def test_extraction_prints_progress_lines_when_stderr_is_not_a_terminal(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BGANHASH_PROGRESS_SECONDS", "0")
    write_digits(tmp_path / "d", range(20), size=40)
    compute_features(load_dataset("folder", data=tmp_path / "d"), SMALL, progress=True)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("features efficientnet_lite0@64")]
    assert lines and "20/20 img (100%)" in lines[-1]
    assert isinstance(progress_bar(5, "x"), LogProgress)  # pytest's captured stderr is not a terminal


def test_default_input_size_follows_the_images_resolution(tmp_path):
    from bganhash.features.config import image_size_for_side

    assert [image_size_for_side(side) for side in (4, 8, 12, 16, 32, 4000)] == [64, 96, 128, 192, 224, 224]
    assert FeatureConfig.for_data(load_dataset("digits")).image_size == 96  # 8x8 digits
    write_digits(tmp_path / "big", range(3), size=300)
    assert FeatureConfig.for_data(load_dataset("folder", data=tmp_path / "big")).image_size == 224
    assert FeatureConfig.for_data(load_dataset("digits"), image_size=128).image_size == 128  # asked for: kept


def test_the_default_engine_serves_several_threads_at_once():
    """The service encodes uploads from several threads; an OpenVINO infer request is busy while it runs."""
    from concurrent.futures import ThreadPoolExecutor

    engine = extract_module.engine_for(SMALL)
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    expected = engine(pixels)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: engine(pixels), range(16)))
    for result in results:
        np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5)


def test_flip_averages_an_image_with_its_mirror_and_is_cached_apart(rng):
    from bganhash.features.cache import preprocessing_key

    image = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    flipped = FeatureConfig(image_size=64, batch_size=8, precision="fp32", flip=True)
    plain = features_of_images([image, image[:, ::-1]], FeatureConfig(image_size=64, batch_size=8, precision="fp32"))
    both = features_of_images([image, image[:, ::-1]], flipped)
    np.testing.assert_allclose(both[0], both[1], rtol=1e-4, atol=1e-5)  # a picture and its mirror: one code
    np.testing.assert_allclose(both[0], plain.mean(0), rtol=1e-4, atol=1e-5)
    assert not np.allclose(plain[0], plain[1], atol=1e-3)
    assert preprocessing_key(flipped) != preprocessing_key(FeatureConfig(image_size=64, precision="fp32"))
    with pytest.raises(InputError, match="flip='yes' must be true or false"):
        FeatureConfig(flip="yes").validate()
