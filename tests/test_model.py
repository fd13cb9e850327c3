"""BGAN networks: shapes at every image size, the sign convention, the relaxations, ablation wiring."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bganhash import InputError
from bganhash.bgan.config import make_config
from bganhash.bgan.model import (
    BGANNetworks,
    Discriminator,
    FinetuneEncoder,
    Generator,
    HashLayer,
    HeadEncoder,
    VGGEncoder,
    images_to_tensor,
    relax_sign,
    sign_codes,
    upsampling_stages,
)

TINY = 1 / 16


@pytest.mark.parametrize("reconstruction_size, stages", [(8, 0), (16, 1), (32, 2), (64, 3)])
def test_upsampling_stages_follow_reconstruction_size(reconstruction_size, stages):
    assert upsampling_stages(reconstruction_size) == stages


@pytest.mark.parametrize("reconstruction_size", [4, 12, 24, 48, 100])
def test_invalid_reconstruction_sizes_are_rejected(reconstruction_size):
    with pytest.raises(InputError, match="reconstruction_size"):
        Generator(8, reconstruction_size)


@pytest.mark.parametrize("image_size", [8, 32, 64])
@pytest.mark.parametrize("n_bits", [8, 12, 48])
def test_generator_and_discriminator_shapes(image_size, n_bits):
    generator = Generator(n_bits, image_size, width_factor=TINY)
    discriminator = Discriminator(image_size, width_factor=TINY)
    fake = generator(torch.randn(3, n_bits))
    assert fake.shape == (3, 3, image_size, image_size)
    assert fake.min() >= -1 and fake.max() <= 1
    logits, phi = discriminator.logits_and_features(fake)
    assert logits.shape == (3,)
    assert phi.shape == (3, 512 // 16, 4, 4)  # stride 2 while the maps exceed 4x4
    assert torch.equal(discriminator.features(fake), phi)


def test_generator_stride_two_layers_match_upsampling_stages():
    strides = [m.stride[0] for m in Generator(8, 32, width_factor=TINY).modules() if isinstance(m, nn.ConvTranspose2d)]
    assert strides == [2, 2, 1]
    strides = [m.stride[0] for m in Generator(8, 8, width_factor=TINY).modules() if isinstance(m, nn.ConvTranspose2d)]
    assert strides == [1, 1, 1]


def test_paper_widths():
    generator = Generator(32, 32)
    assert generator.fully_connected[0].out_features == 8 * 8 * 256
    widths = [m.out_channels for m in generator.modules() if isinstance(m, (nn.ConvTranspose2d, nn.Conv2d))]
    assert widths == [256, 128, 32, 3]
    discriminator = Discriminator(32)
    assert [m.out_channels for m in discriminator.modules() if isinstance(m, nn.Conv2d)] == [32, 128, 256, 512]
    assert discriminator.classifier[1].out_features == 1024


def test_sign_of_zero_is_plus_one():
    layer = HashLayer(4, 6)
    nn.init.zeros_(layer.linear.weight)
    nn.init.zeros_(layer.linear.bias)
    codes = layer.codes(torch.randn(5, 4))
    assert codes.dtype == torch.int8
    assert (codes == 1).all()
    assert sign_codes(torch.tensor([-2.0, -0.0, 0.0, 1e-9, -1e-9])).tolist() == [-1, 1, 1, 1, -1]


def test_relaxations():
    z = torch.tensor([-3.0, -0.2, 0.0, 0.05, 0.7])
    assert torch.allclose(relax_sign(z, 2.0, "app"), torch.tensor([-1.0, -0.4, 0.0, 0.1, 1.0]))
    assert torch.allclose(relax_sign(z, 2.0, "tanh"), torch.tanh(2 * z))
    assert torch.allclose(relax_sign(z, 10.0, "two_step"), torch.tanh(z))  # beta ignored
    big = relax_sign(z, 1e4, "app")
    assert torch.equal(big[z != 0], torch.sign(z[z != 0]))


def test_hash_layer_forward_is_relaxed_projection():
    layer = HashLayer(4, 3)
    x = torch.randn(2, 4)
    assert torch.allclose(layer(x, 3.0, "tanh"), torch.tanh(3.0 * layer.project(x)))


def test_head_encoder_layers():
    encoder = HeadEncoder(10, (7, 5))
    assert encoder(torch.randn(4, 10)).shape == (4, 5)
    assert encoder.out_features == 5
    assert HeadEncoder(10, ()).out_features == 10


@pytest.mark.parametrize("image_size", [8, 32])
def test_vgg_encoder_on_tiny_inputs(image_size):
    encoder = VGGEncoder(image_size, hidden=(16, 12), width_factor=TINY)
    convolutions = [m for m in encoder.modules() if isinstance(m, nn.Conv2d)]
    assert len(convolutions) == 13  # Table 1: 2 + 2 + 3 + 3 + 3
    assert [c.out_channels for c in convolutions[::3]] == [4, 8, 16, 32, 32]
    assert encoder(torch.randn(2, 3, image_size, image_size)).shape == (2, 12)


class _TinyBackbone(nn.Module):
    num_features = 6
    input_mean = (0.5, 0.5, 0.5)
    input_std = (0.5, 0.5, 0.5)

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3)
        self.seen: list[tuple] = []

    def forward_features(self, x):
        self.seen.append((tuple(x.shape), float(x.min()), float(x.max())))
        return self.conv(x).mean(dim=(2, 3))


def test_finetune_encoder_maps_images_to_backbone_input():
    backbone = _TinyBackbone()
    encoder = FinetuneEncoder(backbone, input_size=16, hidden=(5,))
    images = torch.full((2, 3, 8, 8), 1.0)  # white in [-1, 1] is 1 in [0, 1], (1 - 0.5) / 0.5 = 1
    assert encoder(images).shape == (2, 5)
    shape, low, high = backbone.seen[0]
    assert shape == (2, 3, 16, 16) and low == pytest.approx(1.0) and high == pytest.approx(1.0)
    assert any(p is backbone.conv.weight for p in encoder.parameters())  # trained end to end


@pytest.mark.parametrize(
    "overrides, has_generator, has_discriminator",
    [
        ({}, True, True),
        ({"use_content": False, "use_adversarial": False}, False, False),
        ({"use_adversarial": False}, True, True),  # the perceptual loss still reads D's features
        ({"use_adversarial": False, "perceptual_weight": 0.0}, True, False),
        ({"use_content": False}, True, True),
    ],
)
def test_networks_follow_loss_switches(overrides, has_generator, has_discriminator):
    config = make_config("cpu", 8, **overrides)
    networks = BGANNetworks(config, n_features=10, reconstruction_size=8)
    assert (networks.generator is not None) == has_generator
    assert (networks.discriminator is not None) == has_discriminator
    assert networks.codes(torch.randn(3, 10)).shape == (3, 8)


def test_images_to_tensor_range_and_resize():
    import numpy as np

    images = np.zeros((2, 16, 16, 3), np.uint8)
    images[0] = 255
    x = images_to_tensor(images, 8)
    assert x.shape == (2, 3, 8, 8)
    assert torch.allclose(x[0], torch.ones(3, 8, 8)) and torch.allclose(x[1], -torch.ones(3, 8, 8))
