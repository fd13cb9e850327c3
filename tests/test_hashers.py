"""The classic baseline hashers: interface contract, persistence, and per-method oracles."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bganhash._io import write_verified_json
from bganhash._validation import InputError, NotFittedError
from bganhash.hashers import ITQ, PCAH, SH, Hasher, SphericalHashing
from bganhash.registry import BASELINE_CLASSES, BASELINES, HASHERS, create_hasher, display_name, hasher_class

RANDOMISED = ("lsh", "itq", "sph")
BIT_LENGTHS = (12, 24, 48)
PCA_BOUND = ("pcah", "itq")


def correlated_features(rng: np.random.Generator, n_samples: int = 400, n_features: int = 64) -> np.ndarray:
    """Gaussian data with distinct variances per direction, shifted away from the origin."""
    scales = np.linspace(3.0, 0.5, n_features)
    rotation, _ = np.linalg.qr(rng.standard_normal((n_features, n_features)))
    return (rng.standard_normal((n_samples, n_features)) * scales @ rotation + 2.0).astype(np.float32)


@pytest.mark.parametrize("n_bits", BIT_LENGTHS)
@pytest.mark.parametrize("name", BASELINES)
def test_codes_have_shape_dtype_and_values(name, n_bits, rng):
    X = correlated_features(rng)
    codes = create_hasher(name, n_bits, random_state=0).fit(X).encode(X[:37])
    assert codes.shape == (37, n_bits)
    assert codes.dtype == np.int8
    assert set(np.unique(codes)) <= {-1, 1}


@pytest.mark.parametrize("name", BASELINES)
def test_fit_returns_self_and_fit_encode_matches(name, rng):
    X = correlated_features(rng)
    hasher = create_hasher(name, 24, random_state=3)
    assert hasher.fit(X) is hasher
    np.testing.assert_array_equal(create_hasher(name, 24, random_state=3).fit_encode(X), hasher.encode(X))


@pytest.mark.parametrize("name", BASELINES)
def test_same_seed_gives_same_codes(name, rng):
    X = correlated_features(rng)
    first = create_hasher(name, 32, random_state=7).fit(X).encode(X)
    second = create_hasher(name, 32, random_state=7).fit(X).encode(X)
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("name", RANDOMISED)
def test_different_seeds_give_different_codes(name, rng):
    X = correlated_features(rng)
    first = create_hasher(name, 32, random_state=1).fit(X).encode(X)
    second = create_hasher(name, 32, random_state=2).fit(X).encode(X)
    assert not np.array_equal(first, second)


@pytest.mark.parametrize("name", BASELINES)
def test_encode_before_fit_raises_not_fitted(name, rng):
    with pytest.raises(NotFittedError, match="not fitted"):
        create_hasher(name, 12).encode(correlated_features(rng))


@pytest.mark.parametrize("name", BASELINES)
def test_fit_rejects_nan_and_one_dimensional_input(name, rng):
    X = correlated_features(rng)
    X[5, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        create_hasher(name, 12).fit(X)
    with pytest.raises(InputError, match="2-D"):
        create_hasher(name, 12).fit(np.ones(50, dtype=np.float32))


@pytest.mark.parametrize("name", BASELINES)
def test_encode_rejects_wrong_number_of_features(name, rng):
    hasher = create_hasher(name, 12, random_state=0).fit(correlated_features(rng))
    with pytest.raises(InputError, match="63 features, but this model was fitted on 64"):
        hasher.encode(correlated_features(rng, n_features=63))


@pytest.mark.parametrize("bad", [0, -3, 2.5, "12", True])
@pytest.mark.parametrize("name", BASELINES)
def test_fit_rejects_bad_n_bits(name, bad, rng):
    with pytest.raises(InputError, match="n_bits"):
        create_hasher(name, bad).fit(correlated_features(rng))


@pytest.mark.parametrize("name", PCA_BOUND)
def test_pca_methods_reject_more_bits_than_features_or_samples(name, rng):
    with pytest.raises(InputError, match="n_bits=65 with 64 features"):
        create_hasher(name, 65).fit(correlated_features(rng))
    with pytest.raises(InputError, match="n_bits=48 with 30 samples"):
        create_hasher(name, 48).fit(correlated_features(rng, n_samples=30))


def test_bad_seed_and_method_parameters_are_input_errors(rng):
    X = correlated_features(rng)
    with pytest.raises(InputError, match="random_state"):
        create_hasher("lsh", 12, random_state=-1).fit(X)
    with pytest.raises(InputError, match="n_iter"):
        ITQ(12, n_iter=-1).fit(X)
    with pytest.raises(InputError, match="epsilon_mean"):
        SphericalHashing(12, epsilon_mean=0).fit(X)


def test_create_hasher_names_the_choices_and_parameters():
    with pytest.raises(InputError, match="lsh, pcah, itq, sh, sph"):
        create_hasher("kmeans", 12)
    with pytest.raises(InputError, match="n_iter"):
        create_hasher("itq", 12, n_iterations=5)
    assert create_hasher("itq", 12, random_state=4, n_iter=9).get_params() == {
        "n_bits": 12,
        "random_state": 4,
        "n_iter": 9,
    }


def test_registry_and_display_names():
    assert tuple(BASELINE_CLASSES) == BASELINES == ("lsh", "pcah", "itq", "sh", "sph")
    assert HASHERS == ("bgan", *BASELINES)
    assert [display_name(name) for name in HASHERS] == ["BGAN", "LSH", "PCAH", "ITQ", "SH", "SpH"]
    assert all(issubclass(hasher_class(name), Hasher) and hasher_class(name).name == name for name in HASHERS)


@pytest.mark.parametrize("name", BASELINES)
def test_save_then_load_encodes_identically(name, rng, tmp_path):
    X = correlated_features(rng)
    hasher = create_hasher(name, 24, random_state=5).fit(X)
    hasher.save(tmp_path / "model")
    loaded = Hasher.load(tmp_path / "model")
    assert type(loaded) is type(hasher)
    assert loaded.get_params() == hasher.get_params()
    np.testing.assert_array_equal(loaded.encode(X), hasher.encode(X))
    assert type(hasher).load(tmp_path / "model").n_features_in_ == 64


def test_load_refuses_wrong_class_unknown_class_and_missing_files(rng, tmp_path):
    ITQ(12, random_state=0).fit(correlated_features(rng)).save(tmp_path / "itq")
    with pytest.raises(InputError, match="holds a ITQ, not a PCAH"):
        PCAH.load(tmp_path / "itq")
    metadata = tmp_path / "itq" / "hasher.json"
    document = json.loads(metadata.read_text())
    write_verified_json(metadata, {**document, "class": "Evil"})  # edited, checksum and all
    with pytest.raises(InputError, match="unknown hasher class 'Evil'"):
        Hasher.load(tmp_path / "itq")
    metadata.write_text(json.dumps(document))
    (tmp_path / "itq" / "hasher.safetensors").unlink()
    with pytest.raises(InputError, match="hasher.safetensors is missing"):
        Hasher.load(tmp_path / "itq")
    with pytest.raises(InputError, match="hasher.json is missing"):
        Hasher.load(tmp_path / "nowhere")


def test_save_before_fit_raises_not_fitted(tmp_path):
    with pytest.raises(NotFittedError):
        SH(12).save(tmp_path / "sh")


@pytest.mark.parametrize("n_bits", BIT_LENGTHS)
def test_itq_rotation_is_orthogonal_and_loss_never_increases(n_bits, rng):
    hasher = ITQ(n_bits, random_state=0).fit(correlated_features(rng))
    rotation = hasher.rotation_
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(n_bits), atol=1e-5)
    history = hasher.quantization_loss_history_
    assert history.shape == (51,)
    assert np.all(np.diff(history) <= 1e-9 * history[0])
    assert history[-1] < history[0]


def test_itq_codes_are_sign_of_rotated_pca_projection(rng):
    X = correlated_features(rng)
    hasher = ITQ(16, random_state=0, n_iter=20).fit(X)
    projected = (X - X.mean(axis=0)) @ hasher.components_ @ hasher.rotation_
    expected = np.where(projected >= 0, 1, -1)
    assert np.mean(hasher.encode(X) == expected) > 0.999


@pytest.mark.parametrize("n_bits", BIT_LENGTHS)
def test_pcah_matches_independent_principal_components(n_bits, rng):
    X = correlated_features(rng).astype(np.float64)
    centered = X - X.mean(axis=0)
    _, _, right_t = np.linalg.svd(centered, full_matrices=False)
    directions = right_t[:n_bits].T
    largest = np.argmax(np.abs(directions), axis=0)
    directions *= np.sign(directions[largest, np.arange(n_bits)])
    expected = np.where(centered @ directions >= 0, 1, -1)
    codes = PCAH(n_bits).fit(X).encode(X)
    assert np.mean(codes == expected) > 0.999


def reference_sh_modes(ranges: np.ndarray, n_bits: int) -> list[tuple[int, int]]:
    """Weiss et al.'s rule, enumerated directly: all (dim, k >= 1) ordered by (k / R_d)^2, dim, k."""
    candidates = [(k / ranges[d]) ** 2 for d in range(ranges.size) for k in range(1, n_bits + 1)]
    labels = [(d, k) for d in range(ranges.size) for k in range(1, n_bits + 1)]
    order = sorted(range(len(labels)), key=lambda i: (candidates[i], labels[i]))
    return [labels[i] for i in order[:n_bits]]


@pytest.mark.parametrize("n_bits", BIT_LENGTHS)
def test_sh_modes_follow_the_smallest_eigenvalue_rule(n_bits, rng):
    X = correlated_features(rng)
    hasher = SH(n_bits).fit(X)
    projected = X.astype(np.float64) @ hasher.components_.astype(np.float64)
    np.testing.assert_allclose(hasher.min_, projected.min(axis=0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(hasher.max_, projected.max(axis=0), rtol=1e-4, atol=1e-4)
    chosen = [(int(np.flatnonzero(row)[0]), int(row[row != 0][0])) for row in hasher.modes_]
    assert np.all((hasher.modes_ != 0).sum(axis=1) == 1)
    assert chosen == reference_sh_modes(hasher.max_ - hasher.min_, n_bits)


def test_sh_bits_are_balanced_on_uniform_data(rng):
    # well-separated side lengths keep the PCA axis-aligned, so each projected marginal is uniform
    X = (rng.uniform(0, 1, (4000, 4)) * np.array([4, 2, 1, 0.5])).astype(np.float32)
    hasher = SH(12).fit(X)
    assert hasher.modes_.max() > 1  # higher harmonics are among the bits, not only k = 1
    assert np.all(np.abs(hasher.encode(X).mean(axis=0)) < 0.1)


def test_sh_code_is_cosine_of_mode_on_its_pca_dimension(rng):
    X = correlated_features(rng)
    hasher = SH(12).fit(X)
    projected = X.astype(np.float64) @ hasher.components_.astype(np.float64)
    dims = np.argmax(hasher.modes_ != 0, axis=1)
    ks = hasher.modes_.max(axis=1)
    ranges = hasher.max_ - hasher.min_
    expected = np.where(np.cos(ks * np.pi * (projected[:, dims] - hasher.min_[dims]) / ranges[dims]) >= 0, 1, -1)
    assert np.mean(hasher.encode(X) == expected) > 0.999


@pytest.mark.parametrize("n_bits", BIT_LENGTHS)
def test_spherical_hashing_spheres_hold_half_the_points(n_bits, rng):
    X = correlated_features(rng, n_samples=1000, n_features=32)
    hasher = SphericalHashing(n_bits, random_state=0).fit(X)
    inside = hasher.encode(X) > 0
    np.testing.assert_allclose(inside.mean(axis=0), 0.5, atol=0.01)
    overlaps = (inside.T.astype(float) @ inside.astype(float))[np.triu_indices(n_bits, k=1)]
    assert abs(overlaps.mean() - 250) < 0.1 * 250
    assert hasher.converged_


def test_spherical_hashing_trains_on_a_subsample(rng):
    X = correlated_features(rng, n_samples=600, n_features=16)
    hasher = SphericalHashing(12, random_state=0, max_samples=200).fit(X)
    assert np.all(np.abs((hasher.encode(X) > 0).mean(axis=0) - 0.5) < 0.15)


def clustered_data(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """10 well-separated Gaussian clusters in 64-d, 60 points each."""
    centers = rng.standard_normal((10, 64)) * 4
    labels = np.repeat(np.arange(10), 60)
    return (centers[labels] + rng.standard_normal((600, 64))).astype(np.float32), labels


def hamming_precision_at_k(codes: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    """Mean over queries of the share of same-label items among the k nearest others (stable ties)."""
    distances = (codes.shape[1] - codes.astype(np.int32) @ codes.T.astype(np.int32)) // 2
    np.fill_diagonal(distances, codes.shape[1] + 1)
    nearest = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return float(np.mean(labels[nearest] == labels[:, None]))


def test_itq_retrieves_same_cluster_neighbours(rng):
    X, labels = clustered_data(rng)
    codes = ITQ(32, random_state=0).fit(X).encode(X)
    assert hamming_precision_at_k(codes, labels) > 0.9  # chance is about 0.1


@pytest.mark.parametrize("name", BASELINES)
def test_every_baseline_beats_chance_on_clusters(name, rng):
    X, labels = clustered_data(rng)
    codes = create_hasher(name, 32, random_state=0).fit(X).encode(X)
    assert hamming_precision_at_k(codes, labels) > 0.3


@pytest.mark.parametrize("name", ("lsh", "sh", "sph"))
def test_non_pca_bound_methods_accept_more_bits_than_features(name, rng):
    X = correlated_features(rng, n_features=16)
    codes = create_hasher(name, 48, random_state=0).fit(X).encode(X)
    assert codes.shape == (400, 48)
    assert len({tuple(column) for column in codes.T}) > 40  # the extra bits are not copies


@pytest.mark.parametrize("name", BASELINES)
def test_encoding_in_chunks_matches_one_pass(name, rng, monkeypatch):
    X = correlated_features(rng)
    hasher = create_hasher(name, 24, random_state=0).fit(X)
    whole = hasher.encode(X)
    monkeypatch.setattr("bganhash.hashers.base._ENCODE_CHUNK_ROWS", 7)
    np.testing.assert_array_equal(hasher.encode(X), whole)
