"""Retrieval metrics against a brute-force reference: ranking with ties by index, AP, P@K, PR curve."""

from __future__ import annotations

import numpy as np
import pytest

from bganhash import InputError
from bganhash import codes as codes_module
from bganhash.metrics import (
    average_precisions,
    hamming_ranking,
    mean_average_precision,
    precision_at_k,
    precision_at_k_curve,
    precision_recall_curve,
)

# ---- brute-force reference, one query and one item at a time -----------------------------------


def reference_ranking(query: np.ndarray, database: np.ndarray) -> tuple[list[int], list[int]]:
    """Database indices sorted by (Hamming distance, index), and the sorted distances."""
    distances = [int(np.sum(query != item)) for item in database]
    order = sorted(range(len(database)), key=lambda j: (distances[j], j))
    return order, [distances[j] for j in order]


def is_relevant(query_label, item_label) -> bool:
    if np.ndim(query_label) == 0:
        return query_label == item_label
    return bool(np.any(np.logical_and(query_label, item_label)))


def reference_relevance(query_codes, database_codes, query_labels, database_labels) -> list[list[bool]]:
    ranked = []
    for query, label in zip(query_codes, query_labels):
        order, _ = reference_ranking(query, database_codes)
        ranked.append([is_relevant(label, database_labels[j]) for j in order])
    return ranked


def reference_ap(relevant: list[bool], k: int) -> float:
    hits, total = 0, 0.0
    for position, rel in enumerate(relevant[:k], start=1):
        if rel:
            hits += 1
            total += hits / position
    return total / hits if hits else 0.0


def reference_pr(query_codes, database_codes, query_labels, database_labels, n_bits):
    precision, recall = np.zeros(n_bits + 1), np.zeros(n_bits + 1)
    for query, label in zip(query_codes, query_labels):
        distances = np.array([np.sum(query != item) for item in database_codes])
        relevant = np.array([is_relevant(label, item) for item in database_labels])
        for radius in range(n_bits + 1):
            retrieved = distances <= radius
            hits = np.sum(retrieved & relevant)
            precision[radius] += hits / retrieved.sum() if retrieved.sum() else 0.0
            recall[radius] += hits / relevant.sum() if relevant.sum() else 0.0
    return precision / len(query_codes), recall / len(query_codes)


# ---- data ------------------------------------------------------------------------------------


def make_data(rng, n_bits=6, n_queries=9, n_database=60, multi_label=False):
    """Few bits, so many ties; one query whose label no database item has."""
    query_codes = 2 * rng.integers(0, 2, size=(n_queries, n_bits)) - 1
    database_codes = 2 * rng.integers(0, 2, size=(n_database, n_bits)) - 1
    if multi_label:
        query_labels = rng.integers(0, 2, size=(n_queries, 5))
        database_labels = rng.integers(0, 2, size=(n_database, 5)) * (rng.random((n_database, 1)) < 0.7)
        query_labels[0] = 0  # shares no label with anything
    else:
        query_labels = rng.integers(0, 4, size=n_queries)
        database_labels = rng.integers(0, 4, size=n_database)
        query_labels[0] = 99
    return query_codes, database_codes, query_labels, database_labels


@pytest.fixture(params=[False, True], ids=["single-label", "multi-label"])
def data(request, rng):
    return make_data(rng, multi_label=request.param)


# ---- tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize("top_k", [None, 1, 7, 60])
def test_average_precisions_match_reference(data, top_k):
    ranked = reference_relevance(*data)
    expected = [reference_ap(relevant, top_k or len(relevant)) for relevant in ranked]
    result = average_precisions(*data, top_k=top_k)
    np.testing.assert_allclose(result, expected, rtol=1e-12)
    assert result[0] == 0.0  # the query with no relevant item
    assert mean_average_precision(*data, top_k=top_k) == pytest.approx(np.mean(expected), rel=1e-12)


@pytest.mark.parametrize("ks", [[1], [5, 1, 60], [10, 20, 30]])
def test_precision_at_k_matches_reference(data, ks):
    ranked = reference_relevance(*data)
    expected = [np.mean([sum(relevant[:k]) / k for relevant in ranked]) for k in ks]
    np.testing.assert_allclose(precision_at_k_curve(*data, ks=ks), expected, rtol=1e-12)
    assert precision_at_k(*data, k=ks[0]) == pytest.approx(expected[0], rel=1e-12)


def test_precision_recall_curve_matches_reference(data):
    precision, recall = precision_recall_curve(*data)
    expected_precision, expected_recall = reference_pr(*data, n_bits=6)
    assert precision.shape == recall.shape == (7,)
    np.testing.assert_allclose(precision, expected_precision, rtol=1e-12)
    np.testing.assert_allclose(recall, expected_recall, rtol=1e-12)


@pytest.mark.parametrize("top_k", [None, 5])
def test_hamming_ranking_breaks_ties_by_database_index(rng, top_k):
    query_codes, database_codes, _, _ = make_data(rng, n_bits=4, n_database=40)
    distances, order = hamming_ranking(query_codes, database_codes, top_k=top_k)
    assert distances.dtype == np.int32 and order.dtype == np.int64
    for query, row_order, row_distances in zip(query_codes, order, distances):
        expected_order, expected_distances = reference_ranking(query, database_codes)
        assert row_order.tolist() == expected_order[: top_k or 40]
        assert row_distances.tolist() == expected_distances[: top_k or 40]


def test_ties_are_broken_by_database_order_not_by_relevance():
    # Every item is at distance 0: the ranking is the database order, relevant items 2nd and 4th.
    codes = np.ones((4, 8))
    labels = np.array([0, 1, 0, 1])
    ap = average_precisions(codes[:1], codes, [1], labels)
    assert ap[0] == pytest.approx((1 / 2 + 2 / 4) / 2)


def test_metrics_accept_binary_codes_and_agree_with_signed(data):
    query_codes, database_codes, query_labels, database_labels = data
    signed = mean_average_precision(query_codes, database_codes, query_labels, database_labels)
    binary = mean_average_precision(query_codes > 0, (database_codes + 1) // 2, query_labels, database_labels)
    assert signed == binary


def test_results_do_not_depend_on_blocks_or_threads(rng, monkeypatch):
    data = make_data(rng, n_bits=70, n_queries=13, n_database=50)  # two words per code
    whole = average_precisions(*data)
    monkeypatch.setattr(codes_module, "_BLOCK_ELEMENTS", 150)  # three queries per block
    for workers in (1, 2):
        monkeypatch.setattr(codes_module, "usable_cpus", lambda workers=workers: workers)
        np.testing.assert_array_equal(average_precisions(*data), whole)


def test_perfect_codes_give_map_one(rng):
    labels = rng.integers(0, 3, size=50)
    class_codes = np.array([[1, 1, 1, 1], [-1, -1, 1, 1], [1, -1, -1, -1]])
    assert mean_average_precision(class_codes[labels[:5]], class_codes[labels], labels[:5], labels) == 1.0


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ((np.ones((2, 4)), np.ones((5, 3)), [0, 1], [0] * 5), "4 bits but database_codes have 3"),
        ((np.ones((2, 4)), np.ones((5, 4)), [0, 1, 2], [0] * 5), "query_labels has 3 rows but there are 2"),
        ((np.ones((2, 4)), np.ones((5, 4)), [0, 1], np.ones((5, 2), int)), "1-D but database_labels are 2-D"),
        ((np.ones((2, 4)), np.ones((5, 4)), np.ones((2, 3)), np.ones((5, 2))), "3 labels but database_labels have 2"),
        ((np.ones((2, 4)), np.ones((5, 4)), [0.5, 1.0], [0] * 5), "integer class ids"),
        ((np.ones((2, 4)), np.ones((5, 4)), np.full((2, 2), 2), np.ones((5, 2))), "only 0/1"),
        ((np.ones((2, 4)), np.full((5, 4), 0.5), [0, 1], [0] * 5), "0.5"),
        ((np.ones((0, 4)), np.ones((5, 4)), np.zeros(0, int), [0] * 5), "at least one query"),
    ],
)
def test_bad_inputs_are_refused_with_a_clear_message(arguments, message):
    with pytest.raises(InputError, match=message):
        mean_average_precision(*arguments)


@pytest.mark.parametrize("k", [0, 6, 2.5])
def test_precision_at_k_refuses_a_bad_k(k):
    with pytest.raises(InputError, match="k="):
        precision_at_k(np.ones((2, 4)), np.ones((5, 4)), [0, 1], [0] * 5, k=k)
