"""Each BGAN loss against values computed by hand in the test."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bganhash.bgan import losses


def _pairwise_oracle(b: np.ndarray, s: np.ndarray, weights: np.ndarray | None = None) -> float:
    n, L = b.shape
    terms, wts = [], []
    for i in range(n):
        for j in range(n):
            if i != j:
                terms.append((b[i] @ b[j] / L - s[i, j]) ** 2)
                wts.append(1.0 if weights is None else weights[i, j])
    terms, wts = np.array(terms), np.array(wts)
    return 0.5 * float((terms * wts).sum() / wts.sum())


def test_neighborhood_loss_small_case_by_hand():
    b = torch.tensor([[1.0, 1.0], [1.0, -1.0], [1.0, 1.0]])
    s = torch.tensor([[1.0, -1.0, 1.0], [-1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    # pairs (0,1): (0 + 1)^2 = 1; (0,2): (1 - 1)^2 = 0; (1,2): (0 - 1)^2 = 1; each twice -> mean 2/3
    assert losses.neighborhood_loss(b, s).item() == pytest.approx(0.5 * 2 / 3)


@pytest.mark.parametrize("balance", [False, True])
def test_neighborhood_loss_matches_pair_loop(rng, balance):
    b = np.tanh(rng.standard_normal((7, 5)))
    upper = np.triu(rng.random((7, 7)) < 0.3, 1)
    s = np.where(upper | upper.T | np.eye(7, dtype=bool), 1.0, -1.0)
    weights = None
    if balance:
        off = ~np.eye(7, dtype=bool)
        n_pos, n_neg = (s[off] > 0).sum(), (s[off] < 0).sum()
        weights = np.where(s > 0, 1 / n_pos, 1 / n_neg)
    got = losses.neighborhood_loss(torch.tensor(b), torch.tensor(s), balance_pairs=balance).item()
    assert got == pytest.approx(_pairwise_oracle(b, s, weights), rel=1e-6)


def test_balanced_loss_falls_back_when_one_kind_of_pair_is_missing():
    b = torch.tensor([[1.0, 0.5], [0.2, -1.0]])
    s = torch.ones(2, 2)
    assert losses.neighborhood_loss(b, s, True).item() == pytest.approx(losses.neighborhood_loss(b, s, False).item())


def test_neighborhood_loss_is_zero_for_perfect_codes():
    b = torch.tensor([[1.0, -1.0, 1.0], [1.0, -1.0, 1.0], [-1.0, 1.0, -1.0]])
    s = torch.tensor([[1.0, 1.0, -1.0], [1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])
    assert losses.neighborhood_loss(b, s).item() == 0.0


def test_content_loss_pixel_plus_perceptual():
    real, fake = torch.zeros(1, 3, 2, 2), torch.full((1, 3, 2, 2), 0.5)
    phi_real, phi_fake = torch.zeros(1, 2, 1, 1), torch.tensor([1.0, 3.0]).view(1, 2, 1, 1)
    assert losses.content_loss(real, fake).item() == pytest.approx(0.25)
    assert losses.content_loss(real, fake, phi_real, phi_fake).item() == pytest.approx(0.25 + 5.0)
    assert losses.content_loss(real, fake, phi_real, phi_fake, perceptual_weight=0.5).item() == \
        pytest.approx(0.25 + 2.5)


def test_adversarial_terms_by_hand():
    real_logits, fake_logits = torch.tensor([0.0, 2.0]), torch.tensor([-1.0, 1.0])
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    eq14 = (math.log(sig(0)) + math.log(sig(2))) / 2 + (math.log(1 - sig(-1)) + math.log(1 - sig(1))) / 2
    assert losses.adversarial_objective(real_logits, fake_logits).item() == pytest.approx(eq14)
    assert losses.discriminator_loss(real_logits, fake_logits).item() == pytest.approx(-eq14)
    assert losses.generator_adversarial_loss(fake_logits).item() == \
        pytest.approx(-(math.log(sig(-1)) + math.log(sig(1))) / 2)


def test_adversarial_losses_are_finite_for_extreme_logits():
    real, fake = torch.tensor([200.0, -200.0]), torch.tensor([-200.0, 200.0])
    assert torch.isfinite(losses.discriminator_loss(real, fake))
    assert torch.isfinite(losses.generator_adversarial_loss(fake))


def test_quantization_loss_by_hand():
    z = torch.tensor([[0.5, -2.0], [0.0, -0.25]])
    # sgn: [1, -1], [1, -1] -> (0.25 + 1 + 1 + 0.5625) / 4
    assert losses.quantization_loss(z).item() == pytest.approx((0.25 + 1.0 + 1.0 + 0.5625) / 4)


def test_cosine_targets_blend_s_with_the_inputs_cosine():
    import scipy.sparse as sp

    from bganhash.bgan.train import TrainingData

    inputs = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    positives = sp.csr_matrix(np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=bool))
    data = TrainingData(inputs, None, positives)
    plain = data.similarity_block(np.arange(3), torch.device("cpu"))
    torch.testing.assert_close(plain, torch.tensor([[1.0, 1, -1], [1, 1, -1], [-1, -1, 1]]))
    blended = data.similarity_block(np.arange(3), torch.device("cpu"), cosine_weight=0.5)
    cos = 1 / 2 ** 0.5
    expected = 0.5 * plain + 0.5 * torch.tensor([[1.0, cos, 0], [cos, 1, cos], [0, cos, 1]])
    torch.testing.assert_close(blended, expected)
    assert blended[0, 1] < 1.0  # a positive pair is no longer asked for identical codes


def test_cosine_target_weight_must_be_a_fraction():
    from bganhash import InputError
    from bganhash.bgan.config import make_config

    with pytest.raises(InputError, match="cosine_target_weight=1.5 must be between 0 and 1"):
        make_config("cpu", 32, cosine_target_weight=1.5)


def test_bit_spread_loss_by_hand():
    # one pseudo-class on one vertex: both bits constant and equal -> balance 1, moment 1
    collapsed = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0]])
    assert losses.bit_spread_loss(collapsed).item() == pytest.approx(1.0 + 1.0)
    # the four vertices of the square: balanced and uncorrelated -> 0
    spread = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    assert losses.bit_spread_loss(spread).item() == pytest.approx(0.0)
    # bits balanced but equal: balance 0, moment 1 (the off-diagonal pair, twice, mean 1)
    copied = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    assert losses.bit_spread_loss(copied).item() == pytest.approx(1.0)
    assert losses.bit_spread_loss(torch.tensor([[1.0], [1.0]])).item() == pytest.approx(1.0)


def test_targets_set_what_positive_and_negative_pairs_are_asked_for():
    import scipy.sparse as sp

    from bganhash import InputError
    from bganhash.bgan.config import make_config
    from bganhash.bgan.train import TrainingData

    positives = sp.csr_matrix(np.array([[1, 1], [0, 1]], dtype=bool))  # not symmetric: shows which entry is which
    data = TrainingData(torch.zeros(2, 2), None, positives)
    block = data.similarity_block(np.arange(2), torch.device("cpu"), positive_target=0.25)
    torch.testing.assert_close(block, torch.tensor([[0.25, 0.25], [-1.0, 0.25]]))
    block = data.similarity_block(np.arange(2), torch.device("cpu"), negative_target=0.0)
    torch.testing.assert_close(block, torch.tensor([[1.0, 1.0], [0.0, 1.0]]))
    with pytest.raises(InputError, match="positive_target=2 must be between -1 and 1"):
        make_config("cpu", 32, positive_target=2)
    with pytest.raises(InputError, match="negative_target=0.5 must be below positive_target=0.5"):
        make_config("cpu", 32, positive_target=0.5, negative_target=0.5)
    with pytest.raises(InputError, match="bit_spread_weight"):
        make_config("cpu", 32, bit_spread_weight=-1.0)


def test_bit_spread_keeps_a_pseudo_class_off_a_single_code():
    """l_N alone puts each of five tight clusters on one code; the bit-spread term splits them."""
    from bganhash.bgan.estimator import BGANHasher

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 64)) * 3
    features = (centres[rng.integers(0, 5, 600)] + rng.normal(size=(600, 64))).astype(np.float32)
    distinct = {}
    for weight in (0.0, 1.0):
        hasher = BGANHasher(16, random_state=0, use_content=False, use_adversarial=False, k1=30, k2=30,
                            epochs_per_stage=10, lr=3e-3, bit_spread_weight=weight)
        distinct[weight] = len(np.unique(hasher.fit(features, progress=False).encode(features), axis=0))
    assert distinct[0.0] <= 6 and distinct[1.0] >= 3 * distinct[0.0]


def test_relative_perceptual_term_keeps_its_scale_as_features_grow():
    real, fake = torch.zeros(2, 3, 4, 4), torch.full((2, 3, 4, 4), 0.5)
    phi_real, phi_fake = torch.rand(2, 5, 2, 2) + 0.1, torch.rand(2, 5, 2, 2)
    absolute = [losses.content_loss(real, fake, k * phi_real, k * phi_fake) for k in (1.0, 100.0)]
    relative = [losses.content_loss(real, fake, k * phi_real, k * phi_fake, relative_perceptual=True)
                for k in (1.0, 100.0)]
    assert absolute[1] > 1000 * absolute[0] * 0.9  # the paper's term grows with the features' square
    torch.testing.assert_close(relative[0], relative[1])
    pixel = torch.nn.functional.mse_loss(fake, real)
    expected = pixel + ((phi_fake - phi_real) ** 2).mean() / (phi_real ** 2).mean()
    torch.testing.assert_close(relative[0], expected)
