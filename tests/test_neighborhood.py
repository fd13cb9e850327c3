"""Algorithm 1 and the supervised S, checked entry for entry against plain-Python references."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from bganhash._validation import InputError
from bganhash.neighborhood import (
    expand_neighborhood,
    knn_cosine,
    knn_label_precision_curve,
    label_neighborhood,
    label_precision,
    neighborhood_structure,
    positives_per_image,
)
from bganhash.neighborhood import knn as neighborhood
from bganhash.neighborhood.checks import check_knn

# --- references: the algorithm as written, with Python sets and sorted tuples ------------------------


def reference_knn(features: np.ndarray, k: int) -> np.ndarray:
    """Brute-force cosine K-NN: rank every j by (not self, -similarity, j)."""
    unit = features.astype(np.float64) / np.linalg.norm(features.astype(np.float64), axis=1, keepdims=True)
    similarity = unit @ unit.T
    n = len(features)
    return np.array(
        [sorted(range(n), key=lambda j: (j != i, -similarity[i, j], j))[: k + 1] for i in range(n)]
    )


def reference_expand(lists: np.ndarray, k2: int) -> np.ndarray:
    """Algorithm 1 by a double loop: overlaps with Python sets, top K2 by sorted((-count, j)), union."""
    sets = [set(row.tolist()) for row in lists]
    n = len(sets)
    positive = np.zeros((n, n), dtype=bool)
    for i in range(n):
        counts = sorted((-len(sets[i] & sets[j]), j) for j in range(n))
        for _, j in counts[:k2]:
            for member in sets[j]:
                positive[i, member] = positive[member, i] = True
    return positive


# --- feature sets -----------------------------------------------------------------------------------


def lattice_features(
    rng: np.random.Generator, n: int, n_centers: int, flips: int, dim: int = 32, nonzeros: int = 16
) -> np.ndarray:
    """Clustered rows in {-1, 0, 1}^dim with `nonzeros` (a power of 4) non-zeros, some duplicated or
    scaled by powers of two.

    Norms are powers of two, so every cosine is a multiple of 1/nonzeros, exact in float32 and
    float64: ties are exact and plentiful, and the tie rules decide the answer.
    """
    centers = np.zeros((n_centers, dim), dtype=np.float32)
    for center in centers:
        center[rng.choice(dim, nonzeros, replace=False)] = rng.choice([-1.0, 1.0], nonzeros)
    features = centers[rng.integers(0, n_centers, n)]
    for row in features:
        support = np.flatnonzero(row)
        row[rng.choice(support, rng.integers(0, flips + 1), replace=False)] *= -1
    copies = rng.choice(n, n // 5, replace=False)
    features[copies] = features[rng.choice(n, n // 5)] * 2.0 ** rng.integers(-2, 3, (n // 5, 1))
    return features


def gaussian_features(rng: np.random.Generator, n: int, n_centers: int) -> np.ndarray:
    centers = rng.normal(size=(n_centers, 24))
    features = centers[rng.integers(0, n_centers, n)] + 0.6 * rng.normal(size=(n, 24))
    features[: n // 10] = features[n // 10 : 2 * (n // 10)]  # exact duplicates
    return features.astype(np.float32)


def disjoint_groups(n_groups: int, size: int) -> np.ndarray:
    """Groups of identical rows, orthogonal between groups: each K-NN list is exactly its group."""
    return np.repeat(np.eye(n_groups, n_groups + 2, dtype=np.float32), size, axis=0)


def dense(matrix: sp.spmatrix) -> np.ndarray:
    return matrix.toarray().astype(bool)


# --- K-NN ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed, n, n_centers, flips, k", [(0, 60, 6, 3, 5), (1, 120, 4, 6, 10), (2, 150, 30, 1, 20)])
def test_knn_cosine_matches_brute_force_with_exact_ties(seed, n, n_centers, flips, k):
    features = lattice_features(np.random.default_rng(seed), n, n_centers, flips)
    np.testing.assert_array_equal(knn_cosine(features, k), reference_knn(features, k))


@pytest.mark.parametrize("block_elements", [1, 500, 1 << 23])
def test_knn_cosine_is_the_same_for_any_block_size(monkeypatch, block_elements):
    features = lattice_features(np.random.default_rng(3), 90, 5, 4)
    monkeypatch.setattr(neighborhood, "_KNN_BLOCK_ELEMENTS", block_elements)
    np.testing.assert_array_equal(knn_cosine(features, 7), reference_knn(features, 7))


def test_knn_cosine_on_gaussian_features_is_a_valid_ranking(rng):
    features = gaussian_features(rng, 200, 8)
    knn = knn_cosine(features, 12)
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    similarity = unit.astype(np.float64) @ unit.T.astype(np.float64)
    np.testing.assert_array_equal(knn[:, 0], np.arange(200))
    ranked = np.take_along_axis(similarity, knn[:, 1:], axis=1)
    assert (np.diff(ranked, axis=1) <= 1e-6).all()
    left_out = similarity.copy()
    np.put_along_axis(left_out, knn, -np.inf, axis=1)
    assert (left_out.max(axis=1) <= ranked[:, -1] + 1e-6).all()
    assert knn.dtype == np.int64 and knn.shape == (200, 13)


def test_knn_cosine_puts_self_first_among_duplicates():
    features = np.array([[1.0, 0.0], [1.0, 0.0], [2.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    np.testing.assert_array_equal(knn_cosine(features, 2), [[0, 1, 2], [1, 0, 2], [2, 0, 1], [3, 0, 1]])


def duplicated_gaussian_rows(rng: np.random.Generator, n: int, n_distinct: int,
                             dim: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` rows that are copies of `n_distinct` rows of |Gaussian| values (non-negative, as pooled CNN
    features are) in random order, and which of them each row copies."""
    distinct = np.abs(rng.normal(size=(n_distinct, dim))).astype(np.float32)
    groups = rng.integers(0, n_distinct, n)
    return distinct, groups


def reference_knn_of_copies(distinct: np.ndarray, groups: np.ndarray, k: int) -> np.ndarray:
    """The float64 K-NN with ties by index, where copies of one row have exactly equal similarities
    (each similarity is that of the rows copied)."""
    unit = distinct.astype(np.float64) / np.linalg.norm(distinct.astype(np.float64), axis=1, keepdims=True)
    similarity = (unit @ unit.T)[groups][:, groups]
    n = len(groups)
    return np.array([sorted(range(n), key=lambda j: (j != i, -similarity[i, j], j))[: k + 1] for i in range(n)])


@pytest.mark.parametrize("seed, n, n_distinct, dim, k", [(0, 354, 10, 1280, 32), (1, 118, 8, 255, 24),
                                                         (2, 290, 7, 33, 24), (3, 427, 8, 1280, 47)])
@pytest.mark.parametrize("block_elements", [1 << 22, 20_000, 5_000])
def test_knn_cosine_breaks_ties_between_duplicates_by_index_like_a_float64_reference(
        monkeypatch, seed, n, n_distinct, dim, k, block_elements):
    """Float32 products gave copies of one row similarities 1 ulp apart (one copy's similarity taken as
    a row of one panel, the other's as a column of another), so a later copy could rank before an
    earlier one; every copy must tie exactly and go by index, in one panel or many."""
    monkeypatch.setattr(neighborhood, "_KNN_BLOCK_ELEMENTS", block_elements)
    rng = np.random.default_rng(seed)
    distinct, groups = duplicated_gaussian_rows(rng, n, n_distinct, dim)
    np.testing.assert_array_equal(knn_cosine(distinct[groups], k), reference_knn_of_copies(distinct, groups, k))


# --- Algorithm 1 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "seed, n, n_centers, flips, k1, k2",
    [(0, 60, 6, 3, 5, 8), (1, 100, 4, 6, 10, 15), (2, 200, 20, 2, 20, 30), (3, 80, 10, 4, 6, 3), (4, 70, 3, 1, 4, 90)],
)
def test_neighborhood_structure_matches_the_double_loop_reference(seed, n, n_centers, flips, k1, k2):
    features = lattice_features(np.random.default_rng(seed), n, n_centers, flips)
    expected = reference_expand(reference_knn(features, k1), k2)
    np.testing.assert_array_equal(dense(neighborhood_structure(features, k1, k2)), expected)


@pytest.mark.parametrize("k1, k2", [(3, 5), (12, 30), (25, 10)])
def test_expand_neighborhood_matches_the_reference_on_gaussian_features(rng, k1, k2):
    knn = knn_cosine(gaussian_features(rng, 180, 6), k1)
    np.testing.assert_array_equal(dense(expand_neighborhood(knn, k2)), reference_expand(knn, k2))


def test_expansion_adds_the_smallest_zero_overlap_images_when_overlaps_run_out():
    features = disjoint_groups(n_groups=6, size=5)  # every list is its group: 5 non-zero overlaps
    knn = knn_cosine(features, 4)
    S = dense(expand_neighborhood(knn, 7))
    np.testing.assert_array_equal(S, reference_expand(knn, 7))
    # row 29 keeps its group (25-29), then images 0 and 1 of zero overlap, whose lists are 0-4
    assert S[29, 25:].all() and S[29, :5].all() and not S[29, 5:25].any()


@pytest.mark.parametrize("n, k1, k2", [(1, 0, 30), (6, 2, 40), (9, 8, 9)])
def test_expansion_at_the_edges_keeps_every_image_when_k2_reaches_n(rng, n, k1, k2):
    knn = knn_cosine(gaussian_features(rng, n, 3), k1) if n > 1 else np.zeros((1, 1), np.int64)
    S = dense(expand_neighborhood(knn, k2))
    np.testing.assert_array_equal(S, reference_expand(knn, k2))
    assert S.all()  # k2 >= n keeps every image for every i


def test_S_is_boolean_symmetric_csr_with_positive_diagonal(rng):
    S = neighborhood_structure(gaussian_features(rng, 150, 5), k1=6, k2=9)
    assert isinstance(S, sp.csr_matrix) and S.dtype == bool and S.has_sorted_indices
    assert (S != S.T).nnz == 0
    assert S.diagonal().all()
    assert S.data.all()


def test_expansion_with_k2_one_keeps_each_list_symmetrised(rng):
    knn = knn_cosine(gaussian_features(rng, 50, 3), 4)
    expected = np.zeros((50, 50), dtype=bool)
    expected[np.repeat(np.arange(50), 5), knn.ravel()] = True
    np.testing.assert_array_equal(dense(expand_neighborhood(knn, 1)), expected | expected.T)


# --- supervised S and label statistics --------------------------------------------------------------------


@pytest.mark.parametrize("labels", [[2, 0, 2, 1, 0, 2], ["cat", "dog", "cat", "cat", "ship", "dog"]])
def test_label_neighborhood_single_label(labels):
    labels = np.asarray(labels)
    expected = labels[:, None] == labels[None, :]
    np.testing.assert_array_equal(dense(label_neighborhood(labels)), expected)


def test_label_neighborhood_multi_label(rng):
    labels = (rng.random((40, 5)) < 0.25).astype(np.int64)
    labels[3] = 0  # an image without labels keeps only its diagonal
    expected = np.array([[bool((labels[i] & labels[j]).any()) or i == j for j in range(40)] for i in range(40)])
    S = label_neighborhood(labels)
    np.testing.assert_array_equal(dense(S), expected)
    assert S.dtype == bool and dense(S)[3].sum() == 1


def test_positives_per_image_counts_rows_with_the_diagonal():
    S = sp.csr_matrix(np.array([[1, 1, 0], [1, 1, 1], [0, 1, 1]], dtype=bool))
    assert positives_per_image(S) == pytest.approx(7 / 3)


def test_label_precision_of_knn_lists_leaves_self_out():
    knn = np.array([[0, 1, 2], [1, 0, 3], [2, 3, 0], [3, 2, 1]])
    labels = np.array([0, 0, 1, 1])
    assert label_precision(knn, labels) == pytest.approx(4 / 8)  # (0,1) (1,0) (2,3) (3,2) share


def test_label_precision_of_S_leaves_the_diagonal_out(rng):
    S = neighborhood_structure(gaussian_features(rng, 90, 4), 5, 6)
    labels = (rng.random((90, 4)) < 0.4).astype(int)
    pairs = [(i, j) for i, j in zip(*S.nonzero()) if i != j]
    expected = np.mean([(labels[i] & labels[j]).any() for i, j in pairs])
    assert label_precision(S, labels) == pytest.approx(expected)


def test_knn_label_precision_curve_equals_separate_runs(rng):
    features = gaussian_features(rng, 120, 4)
    labels = rng.integers(0, 4, 120)
    curve = knn_label_precision_curve(features, labels, [3, 8], k2=5)
    for position, k1 in enumerate([3, 8]):
        S = neighborhood_structure(features, k1, 5)
        assert curve["knn_precision"][position] == label_precision(knn_cosine(features, k1), labels)
        assert curve["expanded_precision"][position] == label_precision(S, labels)
        assert curve["positives_per_image"][position] == positives_per_image(S)


# --- bad inputs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "features, k, message",
    [
        (np.array([[1.0, np.nan], [0.0, 1.0], [1.0, 1.0]]), 1, "NaN"),
        (np.eye(4), 4, "k=4 must be smaller than the number of rows"),
        (np.eye(4), 0, "k=0"),
        (np.ones(5), 1, "2-D"),
        (np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]), 1, "2 all-zero row"),
    ],
)
def test_knn_cosine_rejects_bad_input(features, k, message):
    with pytest.raises(InputError, match=message):
        knn_cosine(features, k)


@pytest.mark.parametrize(
    "knn, message",
    [
        (np.array([[1, 0], [0, 1]]), "must start with its own index"),
        (np.array([[0, 2], [1, 0]]), r"must lie in \[0, 2\)"),
        (np.array([[0, 0], [1, 0]]), "repeats an index"),
        (np.array([[0.0, 1.0], [1.0, 0.0]]), "integer"),
        (np.array([0, 1]), "2-D"),
    ],
)
def test_expand_neighborhood_rejects_bad_lists(knn, message):
    with pytest.raises(InputError, match=message):
        expand_neighborhood(knn, 2)


@pytest.mark.parametrize(
    "labels, message",
    [(np.array([0, 1]), "labels has 2 rows but there are 3"), (np.array([[0, 2], [1, 0], [1, 1]]), "0/1")],
)
def test_label_functions_reject_bad_labels(labels, message):
    with pytest.raises(InputError, match=message):
        label_precision(np.array([[0, 1], [1, 0], [2, 0]]), labels)


def test_label_neighborhood_rejects_nan_labels():
    with pytest.raises(InputError, match="NaN"):
        label_neighborhood(np.array([0.0, np.nan]))


def test_positives_per_image_rejects_a_dense_matrix():
    with pytest.raises(InputError, match="scipy.sparse"):
        positives_per_image(np.eye(3))


# --- large n: faiss IVF K-NN -----------------------------------------------------------------------


def _clustered(rng, n: int, n_centers: int = 40, dim: int = 32) -> np.ndarray:
    centers = rng.normal(size=(n_centers, dim))
    return (centers[rng.integers(0, n_centers, n)] + 0.4 * rng.normal(size=(n, dim))).astype(np.float32)


def test_ivf_knn_finds_the_exact_neighbours_on_clustered_features(rng):
    pytest.importorskip("faiss")
    features = _clustered(rng, 3000)
    approximate = knn_cosine(features, 10, method="ivf")
    exact = knn_cosine(features, 10, method="exact")
    assert approximate.shape == (3000, 11) and approximate.dtype == np.int64
    np.testing.assert_array_equal(approximate[:, 0], np.arange(3000))
    check_knn(approximate)  # in range, no repeats, self first
    recall = neighborhood.estimate_knn_recall(features, approximate, n_sample=300)
    assert recall >= 0.95
    assert np.mean([len(set(a) & set(e)) / 11 for a, e in zip(approximate, exact)]) >= 0.95


def test_auto_switches_to_ivf_above_the_exact_limit(monkeypatch, rng):
    calls = []
    monkeypatch.setattr(neighborhood, "_knn_ivf", lambda unit, k, nprobe, progress: calls.append(unit.shape) or "ivf")
    features = _clustered(rng, 200)
    monkeypatch.setattr(neighborhood, "EXACT_KNN_MAX_ROWS", 200)
    assert isinstance(knn_cosine(features, 5), np.ndarray) and not calls
    monkeypatch.setattr(neighborhood, "EXACT_KNN_MAX_ROWS", 199)
    assert knn_cosine(features, 5, nprobe=3) == "ivf" and calls == [(200, 32)]


def test_estimate_knn_recall_scores_exact_lists_one_and_random_lists_low(rng):
    features = _clustered(rng, 500)
    exact = knn_cosine(features, 8)
    assert neighborhood.estimate_knn_recall(features, exact, n_sample=100) == 1.0
    shuffled = np.array([[i, *[j for j in rng.permutation(500)[:9] if j != i][:8]] for i in range(500)])
    assert neighborhood.estimate_knn_recall(features, shuffled, n_sample=100) < 0.3


def test_self_first_drops_missing_and_self_and_reports_short_rows():
    found = np.array([[5, 7, 9], [7, 6, 8], [-1, 4, 7]])  # row 5: self first; row 6: self second; row 7: short
    out = np.zeros((9, 3), dtype=np.int64)
    short = neighborhood._self_first(found, np.array([5, 6, 7]), out)
    np.testing.assert_array_equal(short, [7])
    np.testing.assert_array_equal(out[5:7], [[5, 7, 9], [6, 7, 8]])
    assert not out[7].any()


def test_knn_cosine_rejects_an_unknown_method(rng):
    with pytest.raises(InputError, match="method='annoy'"):
        knn_cosine(_clustered(rng, 50), 3, method="annoy")
