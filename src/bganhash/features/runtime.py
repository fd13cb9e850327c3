"""Backbone inference on a runtime made for it: our PyTorch module exported once to ONNX, then run by
OpenVINO (the default: 140 images/s at 224 px on our 2 cores against ONNX Runtime's 112, BENCHMARKS.md),
ONNX Runtime (where OpenVINO is absent) or eager PyTorch (the fallback, 27 images/s end to end).

Every engine takes resized pixels, float32 (n, s, s, 3) in [0, 255], and returns pooled features; the
normalisation and the NHWC -> NCHW transpose live inside the exported graph. The export is cached on disk,
keyed by the backbone's weights, the input size and the exporter version, and written atomically, so only
the first use of a (backbone, size) pays for torch.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import hashlib
import logging
import os
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from bganhash._io import cache_root
from bganhash._system import usable_cpus
from bganhash.features.backbones import backbone_weights_file, shared_backbone
from bganhash.features.config import resolve_precision, resolve_runtime

logger = logging.getLogger(__name__)

CACHE_VARIABLE = "BGANHASH_RUNTIME_CACHE"  # where exported models live (default <cache root>/runtimes)
EXPORT_VERSION = 1  # bump when the exported graph changes (inputs, normalisation, opset)
ONNX_OPSET = 17


def runtime_cache_dir() -> Path:
    """Folder of exported models: $BGANHASH_RUNTIME_CACHE, else <bganhash cache>/runtimes."""
    configured = os.environ.get(CACHE_VARIABLE, "").strip()
    return Path(configured).expanduser() if configured else cache_root() / "runtimes"


class FeatureEngine(abc.ABC):
    """Resized pixels float32 (n, s, s, 3) in [0, 255] -> features float32 (n, num_features)."""

    runtime: str
    precision: str = "fp32"

    @abc.abstractmethod
    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """The pooled features of a batch of resized pixels."""


class TorchEngine(FeatureEngine):
    """Eager PyTorch (channels_last), the reference every other engine is checked against."""

    runtime = "torch"

    def __init__(self, backbone_name: str) -> None:
        self.module = _normalised_module(shared_backbone(backbone_name))

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        import torch

        from bganhash._system import torch_threads

        with torch_threads(), torch.inference_mode():
            return self.module(torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))).numpy()


class OnnxRuntimeEngine(FeatureEngine):
    runtime = "onnxruntime"

    def __init__(self, model_path: Path) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = usable_cpus()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = onnxruntime.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"pixels": np.ascontiguousarray(pixels, dtype=np.float32)})[0]


class OpenVinoEngine(FeatureEngine):
    runtime = "openvino"

    def __init__(self, model_path: Path, precision: str) -> None:
        import openvino

        self.precision = precision
        core = openvino.Core()
        cache = runtime_cache_dir() / f"openvino-{openvino.__version__}"
        # int8: the quantised model's own QDQ nodes make its convolutions int8; the rest stays f32
        config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                  "INFERENCE_NUM_THREADS": usable_cpus(), "PERFORMANCE_HINT": "LATENCY", "CACHE_DIR": str(cache)}
        self.request = core.compile_model(str(model_path), "CPU", config).create_infer_request()
        self._lock = threading.Lock()  # an infer request runs one inference at a time ("busy" otherwise)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        with self._lock:  # the service encodes from several threads; each inference uses every core anyway
            result = self.request.infer({0: np.ascontiguousarray(pixels, dtype=np.float32)})
            return np.array(result[0], dtype=np.float32)


@functools.lru_cache(maxsize=4)
def feature_engine(backbone: str, image_size: int, runtime: str = "auto", precision: str = "fp32") -> FeatureEngine:
    """The engine for (backbone, input size, runtime, precision), built once per process."""
    precision = resolve_precision(precision, runtime)
    runtime = resolve_runtime(runtime, precision)
    if runtime == "torch":
        return TorchEngine(backbone)
    model_path = exported_model(backbone, image_size)
    if runtime == "onnxruntime":
        return OnnxRuntimeEngine(model_path)
    if precision == "int8":
        from bganhash.features.quantize import quantized_model

        model_path = quantized_model(model_path, image_size)
    return OpenVinoEngine(model_path, precision)


def exported_model(backbone: str, image_size: int) -> Path:
    """The cached ONNX export of `backbone` at `image_size` (exported now, atomically, when absent)."""
    name = f"{backbone}-{image_size}px-{weights_fingerprint(backbone)}-v{EXPORT_VERSION}.onnx"
    path = runtime_cache_dir() / name
    if not path.is_file():
        logger.info("exporting %s at %d px to %s (once)", backbone, image_size, path)
        _export_onnx(backbone, image_size, path)
    return path


def weights_fingerprint(backbone: str) -> str:
    """Short hash of the backbone's pretrained weights (its weights file, else its state_dict)."""
    weights = backbone_weights_file(backbone)
    if weights is not None:
        stat = weights.stat()
        return _file_digest(str(weights), stat.st_size, stat.st_mtime_ns)
    digest = hashlib.sha256()
    for name, tensor in shared_backbone(backbone).state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


@functools.lru_cache(maxsize=8)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def _export_onnx(backbone: str, image_size: int, path: Path) -> None:
    import torch

    module = _normalised_module(shared_backbone(backbone))
    example = torch.zeros(2, image_size, image_size, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(None):
            warnings.simplefilter("ignore")  # tracer warnings: the padding is fixed per input size, as intended
            torch.onnx.export(module, (example,), temporary, input_names=["pixels"], output_names=["features"],
                              dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}},
                              opset_version=ONNX_OPSET, dynamo=False)
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def _normalised_module(backbone: Any) -> Any:
    """`backbone` behind its own input scaling: pixels (n, s, s, 3) in [0, 255] -> pooled features."""
    import torch

    class NormalisedBackbone(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = backbone
            mean = torch.tensor(backbone.input_mean, dtype=torch.float32) * 255.0
            std = torch.tensor(backbone.input_std, dtype=torch.float32) * 255.0
            self.register_buffer("mean", mean.view(1, 3, 1, 1), persistent=False)
            self.register_buffer("std", std.view(1, 3, 1, 1), persistent=False)

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            images = pixels.permute(0, 3, 1, 2)  # a channels_last view: no copy
            return self.backbone.forward_features((images - self.mean) / self.std)

    return NormalisedBackbone().eval()
