"""Codes: validation, packing (np.packbits layout) and popcount Hamming distances against brute force."""

from __future__ import annotations

import numpy as np
import pytest

from bganhash import InputError
from bganhash import codes as codes_module
from bganhash.codes import hamming_distances, pack_codes, to_signed, unpack_codes


def brute_force_distances(query_packed: np.ndarray, database_packed: np.ndarray) -> np.ndarray:
    """Per-pair popcount of the XOR of the codes read as big integers."""
    as_int = lambda row: int.from_bytes(row.tobytes(), "big")  # noqa: E731
    return np.array([[bin(as_int(q) ^ as_int(d)).count("1") for d in database_packed] for q in query_packed])


def test_pack_codes_is_msb_first_with_zero_padding():
    codes = np.array([[1, 0, 0, 0, 0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 0, 0, 0, 1, 0, 1]])
    packed = pack_codes(codes)
    assert packed.dtype == np.uint8
    assert packed.tolist() == [[0b10000000, 0b11000000], [0b00000001, 0b01000000]]


@pytest.mark.parametrize("n_bits", [1, 12, 24, 48, 63, 64, 65])
def test_signed_binary_and_bool_codes_pack_alike(rng, n_bits):
    bits = rng.integers(0, 2, size=(7, n_bits))
    expected = np.packbits(bits.astype(bool), axis=1)
    assert expected.shape == (7, (n_bits + 7) // 8)
    for codes in (bits, bits.astype(bool), 2 * bits - 1, (2 * bits - 1).astype(np.float32), bits.astype(np.float64)):
        np.testing.assert_array_equal(pack_codes(codes), expected)


@pytest.mark.parametrize("n_bits", [12, 24, 48, 63, 64])
def test_unpack_inverts_pack(rng, n_bits):
    signed = 2 * rng.integers(0, 2, size=(9, n_bits)) - 1
    unpacked = unpack_codes(pack_codes(signed), n_bits)
    assert unpacked.dtype == np.int8
    np.testing.assert_array_equal(unpacked, signed)


def test_to_signed_maps_zero_and_false_to_minus_one():
    expected = np.array([[1, -1, -1, 1]], np.int8)
    for codes in ([[1, 0, 0, 1]], [[True, False, False, True]], [[1, -1, -1, 1]]):
        result = to_signed(codes)
        assert result.dtype == np.int8
        np.testing.assert_array_equal(result, expected)


@pytest.mark.parametrize(
    ("codes", "message"),
    [
        (np.array([[1.0, np.nan]]), "NaN"),
        (np.array([[1.0, 0.5]]), "0.5"),
        (np.array([[1, 3]]), "3"),
        (np.array([[1, 0, -1]]), "mixes -1 and 0"),
        (np.ones((2, 3, 4)), "3-D"),
        (np.ones(5), "1-D"),
        (np.ones((3, 0)), "no bits"),
        (np.array([["a", "b"]]), "dtype"),
    ],
)
def test_pack_codes_rejects_bad_values_and_shapes(codes, message):
    with pytest.raises(InputError, match=message):
        pack_codes(codes)


@pytest.mark.parametrize("n_bits", [12, 24, 48, 63, 64, 130])
def test_hamming_distances_match_brute_force_popcount(rng, n_bits):
    queries = pack_codes(rng.integers(0, 2, size=(6, n_bits)))
    database = pack_codes(rng.integers(0, 2, size=(40, n_bits)))
    distances = hamming_distances(queries, database)
    assert distances.dtype == np.uint16 and distances.shape == (6, 40)
    np.testing.assert_array_equal(distances, brute_force_distances(queries, database))


def test_hamming_distances_are_the_same_in_many_small_blocks(rng, monkeypatch):
    queries = pack_codes(rng.integers(0, 2, size=(11, 64)))
    database = pack_codes(rng.integers(0, 2, size=(30, 64)))
    whole = hamming_distances(queries, database)
    monkeypatch.setattr(codes_module, "_BLOCK_ELEMENTS", 70)  # two queries per block, threads
    np.testing.assert_array_equal(hamming_distances(queries, database), whole)


def test_hamming_distances_reject_unpacked_or_mismatched_codes(rng):
    packed = pack_codes(rng.integers(0, 2, size=(3, 16)))
    with pytest.raises(InputError, match="uint8"):
        hamming_distances(packed.astype(np.int64), packed)
    with pytest.raises(InputError, match="2 bytes per code but database_packed has 3"):
        hamming_distances(packed, np.zeros((2, 3), np.uint8))


def test_unpack_rejects_wrong_width_and_padding_bits():
    with pytest.raises(InputError, match="12 bits pack to 2"):
        unpack_codes(np.zeros((1, 3), np.uint8), 12)
    with pytest.raises(InputError, match="padding bits"):
        unpack_codes(np.array([[0, 0b00001000]], np.uint8), 12)
