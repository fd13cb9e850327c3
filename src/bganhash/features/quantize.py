"""int8 backbones: the fp32 ONNX export quantised statically (ONNX Runtime's QDQ format, weights per channel),
run by OpenVINO, which executes the quantised convolutions in int8.

Calibration reads crops of scikit-learn's two embedded sample photographs (no dataset, no download), so the
quantised model depends only on the backbone and the input size, and is cached beside its fp32 export.
Measured on CIFAR-10 at 224 px (BENCHMARKS.md): features at cosine 0.98 to fp32 on average, against bf16's
0.997; an option, not the default.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

QUANTIZATION_VERSION = 1  # bump when the calibration or the quantisation settings change
CALIBRATION_CROPS = 128
CALIBRATION_BATCH = 8
CALIBRATION_PERCENTILE = 99.99  # min-max calibration measured worse: cosine to fp32 0.971 against 0.982


def quantized_model(fp32_model: Path, image_size: int) -> Path:
    """The int8 version of the exported `fp32_model` (input `image_size` px), quantised now when absent."""
    path = fp32_model.with_name(f"{fp32_model.stem}-int8-q{QUANTIZATION_VERSION}.onnx")
    if not path.is_file():
        logger.warning("quantising %s to int8 (once, about a minute)", fp32_model.name)
        _quantize(fp32_model, image_size, path)
    return path


def calibration_pixels(image_size: int, count: int = CALIBRATION_CROPS, seed: int = 0) -> np.ndarray:
    """`count` square crops (random position and scale, every other one mirrored) of scikit-learn's sample
    photographs, resized to `image_size`: float32 (count, s, s, 3) in [0, 255], as the engines take them."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    crops = []
    for index in range(count):
        photo = photos[index % len(photos)]
        height, width, _ = photo.shape
        side = int(rng.integers(min(height, width) // 4, min(height, width)))
        top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        crop = Image.fromarray(photo[top:top + side, left:left + side]).resize((image_size, image_size),
                                                                              Image.Resampling.BILINEAR)
        pixels = np.asarray(crop, dtype=np.float32)
        crops.append(pixels[:, ::-1] if index % 2 else pixels)
    return np.ascontiguousarray(np.stack(crops))


def _quantize(fp32_model: Path, image_size: int, path: Path) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pixels = calibration_pixels(image_size)

    class Calibration(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(range(0, len(pixels), CALIBRATION_BATCH))

        def get_next(self) -> dict[str, np.ndarray] | None:
            start = next(self.batches, None)
            return None if start is None else {"pixels": pixels[start:start + CALIBRATION_BATCH]}

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".quantize-") as scratch:
        prepared, quantized = Path(scratch) / "prepared.onnx", Path(scratch) / "int8.onnx"
        with contextlib.redirect_stdout(None):  # the calibrator prints its histogram settings
            quant_pre_process(str(fp32_model), str(prepared), skip_symbolic_shape=True)
            quantize_static(str(prepared), str(quantized), Calibration(), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.Percentile,
                            extra_options={"CalibPercentile": CALIBRATION_PERCENTILE})
        os.replace(quantized, path)  # atomic: a reader sees the whole model or none
