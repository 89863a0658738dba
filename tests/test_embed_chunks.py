"""Chunking and batching of long sequences for embedding (no model needed)."""

import numpy as np

from msenc_lib.embed import Chunk, chunk_sequence, token_batches

SEP = 99


def test_chunks_end_at_time_step_boundaries_and_cover_everything():
    rows = [np.array([1, 2, 3, SEP]), np.array([4, 5, SEP]), np.array([6, 7, 8, 9, SEP]), np.array([1, 1])]
    ids = np.concatenate(rows)
    pieces = chunk_sequence(ids, context=8, sep_id=SEP)
    assert np.array_equal(np.concatenate(pieces), ids)
    assert all(len(p) <= 8 for p in pieces)
    assert all(p[-1] == SEP for p in pieces[:-1])  # every cut is right after a separator
    assert [len(p) for p in pieces] == [7, 7]


def test_window_without_separator_is_cut_hard():
    ids = np.arange(20)
    pieces = chunk_sequence(ids, context=8, sep_id=SEP)
    assert [len(p) for p in pieces] == [8, 8, 4]
    assert np.array_equal(np.concatenate(pieces), ids)
    assert [len(p) for p in chunk_sequence(ids, context=32, sep_id=None)] == [20]


def test_batches_respect_the_padded_token_budget():
    rng = np.random.default_rng(0)
    chunks = [Chunk(i, np.zeros(int(n)), True) for i, n in enumerate(rng.integers(1, 50, size=40))]
    batches = list(token_batches(chunks, batch_tokens=100))
    assert sorted(c.row for b in batches for c in b) == list(range(40))
    for b in batches:
        width = max(len(c.ids) for c in b)
        assert width * len(b) <= 100 or len(b) == 1
