"""BGAN networks (Section 3.2): encoders, the hash layer, the generator and the discriminator.

Images inside the networks are float (n, 3, s, s) in [-1, 1]; the generator's tanh output lives in
the same range. Widths are the paper's times `width_factor` (at least one channel each).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from bganhash.bgan.config import BGANConfig, check_reconstruction_size
from bganhash.features.backbones import create_backbone

VGG_GROUPS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))  # Table 1: (filters, conv layers)
VGG_MIN_SIDE = 32  # the VGG encoder reads images at least this large (CIFAR-10's side)
BASE_SIZE = 8  # the generator's fully connected layer makes 8x8 maps (Section 3.2.3)


def scaled(width: int, factor: float) -> int:
    """A paper width scaled by `factor`, never below one channel."""
    return max(1, int(round(width * factor)))


def relax_sign(z: torch.Tensor, beta: float, activation: str) -> torch.Tensor:
    """The smooth stand-in for sgn used in training: app(beta z) (Eq. 5), tanh(beta z) (Eq. 7), or,
    for the two-step ablation, tanh(z) at a fixed beta = 1 (sign is applied only after training)."""
    if activation == "app":
        return torch.clamp(beta * z, -1.0, 1.0)
    if activation == "tanh":
        return torch.tanh(beta * z)
    if activation == "two_step":
        return torch.tanh(z)
    raise ValueError(f"activation={activation!r} must be 'app', 'tanh' or 'two_step'")


def sign_codes(z: torch.Tensor) -> torch.Tensor:
    """sgn(z) as int8 {-1, +1}, with sgn(0) = +1 (the paper's definition, Section 3.2.2)."""
    return torch.where(z >= 0, 1, -1).to(torch.int8)


class HashLayer(nn.Module):
    """z = W_h^T phi (Eq. 15): relaxed codes for training, exact signs for encoding."""

    def __init__(self, in_features: int, n_bits: int, batchnorm: bool = False) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, n_bits)
        # NetworkConfig.hash_batchnorm; absent (not an identity) so models saved without it load unchanged
        self.batchnorm = nn.BatchNorm1d(n_bits) if batchnorm else None

    def project(self, features: torch.Tensor) -> torch.Tensor:
        z = self.linear(features)
        return self.batchnorm(z) if self.batchnorm is not None else z

    def forward(self, features: torch.Tensor, beta: float = 1.0, activation: str = "tanh") -> torch.Tensor:
        return relax_sign(self.project(features), beta, activation)

    @torch.no_grad()
    def codes(self, features: torch.Tensor) -> torch.Tensor:
        return sign_codes(self.project(features))


def _fully_connected(in_features: int, hidden: tuple[int, ...]) -> tuple[nn.Sequential, int]:
    """Linear + ReLU layers (the paper's FC6/FC7) and their output width."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_features, width), nn.ReLU(inplace=True)]
        in_features = width
    return nn.Sequential(*layers), in_features


class HeadEncoder(nn.Module):
    """FC layers on cached frozen backbone features: the CPU mode's encoder. With `passthrough` (and hidden
    layers) it outputs [FC(features), features], so the hash layer can start as a linear hash of the features
    (NetworkConfig.hash_init)."""

    def __init__(self, in_features: int, hidden: tuple[int, ...] = (1024,), passthrough: bool = False) -> None:
        super().__init__()
        self.layers, self.out_features = _fully_connected(in_features, tuple(hidden))
        self.passthrough = passthrough and bool(hidden)
        if self.passthrough:
            self.out_features += in_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.passthrough:
            return torch.cat([self.layers(features), features], dim=1)
        return self.layers(features)


@torch.no_grad()
def initialise_hash_layer(hash_layer: HashLayer, projection: np.ndarray, offset: np.ndarray) -> None:
    """Start the hash layer as z = features @ projection + offset (a linear hash such as ITQ's) on its last
    inputs, the features a HeadEncoder passes through, with the hidden layer's weights at 0; the hidden path
    still learns (its weights' gradient is not 0)."""
    linear = hash_layer.linear
    linear.weight.zero_()
    linear.weight[:, -projection.shape[0]:] = torch.from_numpy(np.ascontiguousarray(projection.T, dtype=np.float32))
    linear.bias.copy_(torch.from_numpy(np.asarray(offset, dtype=np.float32)))


class VGGEncoder(nn.Module):
    """The paper's Table 1 encoder from pixels: five groups of 3x3 convolutions with ReLU, a 2x2
    max-pool after each group while the maps are at least 2x2, then FC6/FC7; He-initialised, no
    pretrained weights. Images smaller than VGG_MIN_SIDE are first upsampled (bilinear) to it, so the
    five groups see 32, 16, 8, 4, 2 pixel maps: on 1x1 maps a 3x3 convolution uses one of its nine taps
    and the signal fades (8x8 digits reach 1x1 after three pools)."""

    def __init__(self, input_size: int, hidden: tuple[int, ...] = (4096, 4096), width_factor: float = 1.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        self.input_size = max(input_size, VGG_MIN_SIDE)
        channels, size = 3, self.input_size
        for filters, repeats in VGG_GROUPS:
            for _ in range(repeats):
                layers += [nn.Conv2d(channels, scaled(filters, width_factor), 3, padding=1), nn.ReLU(inplace=True)]
                channels = scaled(filters, width_factor)
            if size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
        self.convolutions = nn.Sequential(*layers)
        self.fully_connected, self.out_features = _fully_connected(channels * size * size, tuple(hidden))
        he_initialise(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] < self.input_size:
            images = nn.functional.interpolate(images, size=self.input_size, mode="bilinear", align_corners=False)
        return self.fully_connected(self.convolutions(images).flatten(1))


def he_initialise(module: nn.Module) -> None:
    """He (Kaiming) normal initialisation, fan-in, ReLU gain, zero biases, of every convolution and linear
    layer of `module`. PyTorch's default (variance 1/(3 fan_in)) shrinks the signal by about 6x in variance
    per ReLU layer: through the 13 convolutions and 2 FC layers of a from-scratch VGG every image then gets
    the same z (its spread over images was 3e-9 against a bias of 2e-2) and the same code. He et al. (2015)
    showed this initialisation trains plain VGG-style networks from scratch; no pretrained VGG is used."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(layer.bias)


class FinetuneEncoder(nn.Module):
    """A pretrained backbone trained end to end, then FC layers: images in [-1, 1] are mapped to the
    backbone's input (size, mean, std) inside, so every encoder takes the same tensors."""

    def __init__(self, backbone: nn.Module, input_size: int, hidden: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.backbone = backbone
        self.input_size = input_size
        self.register_buffer("mean", torch.tensor(backbone.input_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(backbone.input_std).view(1, 3, 1, 1), persistent=False)
        self.fully_connected, self.out_features = _fully_connected(backbone.num_features, tuple(hidden))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images + 1.0) / 2.0
        if x.shape[-1] != self.input_size:
            x = nn.functional.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False)
        return self.fully_connected(self.backbone.forward_features((x - self.mean) / self.std))


def upsampling_stages(reconstruction_size: int) -> int:
    """Stride-2 layers needed to grow the generator's 8x8 maps to `reconstruction_size` (0 for 8x8 digits)."""
    return int(math.log2(check_reconstruction_size(reconstruction_size) // BASE_SIZE))


class Generator(nn.Module):
    """b -> FC to 8x8xC -> 5x5 transposed convolutions (stride 2 while up-sampling is needed, else 1),
    batch-norm + ELU after each -> 1x1 convolution to RGB -> tanh (Section 3.2.3)."""

    def __init__(self, n_bits: int, reconstruction_size: int, width_factor: float = 1.0,
                 widths: tuple[int, ...] = (256, 128, 32), fc_channels: int = 256) -> None:
        super().__init__()
        n_up = upsampling_stages(reconstruction_size)
        widths = tuple(widths) + (widths[-1],) * max(0, n_up - len(widths))  # more layers for large images
        self.fc_channels = scaled(fc_channels, width_factor)
        self.fully_connected = nn.Sequential(
            nn.Linear(n_bits, self.fc_channels * BASE_SIZE * BASE_SIZE),
            nn.BatchNorm1d(self.fc_channels * BASE_SIZE * BASE_SIZE),
            nn.ELU(inplace=True),
        )
        layers: list[nn.Module] = []
        channels = self.fc_channels
        for index, width in enumerate(widths):
            out = scaled(width, width_factor)
            if index < n_up:
                layers.append(nn.ConvTranspose2d(channels, out, 5, stride=2, padding=2, output_padding=1))
            else:
                layers.append(nn.ConvTranspose2d(channels, out, 5, stride=1, padding=2))
            layers += [nn.BatchNorm2d(out), nn.ELU(inplace=True)]
            channels = out
        layers += [nn.Conv2d(channels, 3, 1), nn.Tanh()]
        self.deconvolutions = nn.Sequential(*layers)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        maps = self.fully_connected(codes).view(-1, self.fc_channels, BASE_SIZE, BASE_SIZE)
        # channels-last maps take oneDNN's fast kernels for these narrow layers (with fused Adam, a CPU
        # training epoch 1.13x faster: BENCHMARKS.md)
        return self.deconvolutions(maps.contiguous(memory_format=torch.channels_last))


class Discriminator(nn.Module):
    """5x5 convolutions (stride 2 while the maps are larger than 4x4), ELU, no pooling, dense layer,
    one logit (the sigmoid is inside the loss). `features` = phi, the last convolution's activations."""

    def __init__(self, reconstruction_size: int, widths: tuple[int, ...] = (32, 128, 256, 512),
                 width_factor: float = 1.0, dense: int = 1024) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, size = 3, check_reconstruction_size(reconstruction_size)
        for width in widths:
            stride = 2 if size > 4 else 1
            out = scaled(width, width_factor)
            layers += [nn.Conv2d(channels, out, 5, stride=stride, padding=2), nn.ELU(inplace=True)]
            channels, size = out, size // stride
        self.convolutions = nn.Sequential(*layers)
        hidden = scaled(dense, width_factor)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(channels * size * size, hidden), nn.ELU(inplace=True), nn.Linear(hidden, 1)
        )

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.convolutions(images.contiguous(memory_format=torch.channels_last))

    def logits_and_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        phi = self.features(images)
        return self.classifier(phi).squeeze(1), phi

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits_and_features(images)[0]


class BGANNetworks(nn.Module):
    """All trained modules in one state dict: encoder, hash layer and, when a loss needs them, the
    generator and the discriminator. `reconstruction_size` is the side of the images the generator makes
    and the discriminator reads (and, for encoder="vgg", the encoder's input side)."""

    def __init__(self, config: BGANConfig, n_features: int, reconstruction_size: int,
                 backbone: nn.Module | None = None, backbone_input_size: int = 224) -> None:
        super().__init__()
        net, loss = config.network, config.loss
        if net.encoder == "head":
            self.encoder: nn.Module = HeadEncoder(n_features, net.head_hidden, passthrough=net.hash_init == "itq")
        elif net.encoder == "vgg":
            self.encoder = VGGEncoder(reconstruction_size, net.head_hidden, net.width_factor)
        else:
            if backbone is None:
                backbone = create_backbone(net.backbone)
            self.encoder = FinetuneEncoder(backbone, backbone_input_size, net.head_hidden)
        self.hash_layer = HashLayer(self.encoder.out_features, config.n_bits, net.hash_batchnorm)
        self.generator: Generator | None = None
        self.discriminator: Discriminator | None = None
        if loss.needs_images:
            self.generator = Generator(config.n_bits, reconstruction_size, net.width_factor,
                                       net.generator_widths, net.generator_fc_channels)
        if loss.use_adversarial or (loss.use_content and loss.perceptual_weight > 0):
            self.discriminator = Discriminator(reconstruction_size, net.discriminator_widths,
                                               net.width_factor, net.discriminator_dense)

    @property
    def encodes_pixels(self) -> bool:
        return not isinstance(self.encoder, HeadEncoder)

    def project(self, inputs: torch.Tensor) -> torch.Tensor:
        """Real-valued z for features (head) or images in [-1, 1] (vgg, finetune)."""
        return self.hash_layer.project(self.encoder(inputs))

    @torch.no_grad()
    def codes(self, inputs: torch.Tensor) -> torch.Tensor:
        return sign_codes(self.project(inputs))


def images_to_tensor(images: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (n, h, w, 3) images -> float (n, 3, size, size) in [-1, 1] (area-resized when needed)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = nn.functional.interpolate(x, size=(size, size), mode="area" if x.shape[-1] > size else "bilinear",
                                      align_corners=None if x.shape[-1] > size else False)
    return x
