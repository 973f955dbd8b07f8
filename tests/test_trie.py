import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from angel_dist.trie import Trie, build_csr
from angel_dist.trie.trie import ARRAYS

EOS = 2
VOCAB = 40


def dict_trie(sequences):
    """GenBioEL's representation: nested dicts keyed by token."""
    root = {}
    for seq in sequences:
        node = root
        for token in seq:
            node = node.setdefault(token, {})
    return root


def dict_allowed(root, prefix):
    node = root
    for token in prefix:
        if token not in node:
            return []
        node = node[token]
    return sorted(node)


def make_trie(sequences):
    flat = np.concatenate([np.array(s, dtype=np.int64) for s in sequences])
    return Trie(build_csr(flat, np.array([len(s) for s in sequences]), EOS), EOS, VOCAB)


name_bodies = st.lists(st.lists(st.integers(3, VOCAB - 1), min_size=0, max_size=8), min_size=1, max_size=40,
                       unique_by=tuple)


@settings(max_examples=200, deadline=None)
@given(bodies=name_bodies, data=st.data())
def test_trie_equals_dict_of_dicts(bodies, data):
    sequences = [b + [EOS] for b in bodies]
    trie, reference = make_trie(sequences), dict_trie(sequences)
    for seq in sequences:
        for k in range(len(seq) + 1):
            assert trie.allowed(seq[:k]) == dict_allowed(reference, seq[:k])
    for _ in range(20):
        prefix = data.draw(st.lists(st.integers(0, VOCAB - 1), max_size=9))
        assert trie.allowed(prefix) == dict_allowed(reference, prefix)
    nodes = sum(1 for _ in _walk(reference)) + 1
    assert trie.n_nodes == nodes


def _walk(node):
    for child in node.values():
        yield child
        yield from _walk(child)


@settings(max_examples=100, deadline=None)
@given(bodies=name_bodies, data=st.data())
def test_batched_advance_and_mask_agree_with_allowed(bodies, data):
    sequences = [b + [EOS] for b in bodies]
    trie = make_trie(sequences)
    # Random prefixes: some follow names, some leave the trie.
    prefixes = []
    for _ in range(16):
        if data.draw(st.booleans()):
            seq = data.draw(st.sampled_from(sequences))
            prefixes.append(seq[:data.draw(st.integers(0, len(seq)))])
        else:
            prefixes.append(data.draw(st.lists(st.integers(0, VOCAB - 1), max_size=6)))
    depth = max(len(p) for p in prefixes)
    states = trie.start(len(prefixes))
    for d in range(depth):
        step = torch.tensor([p[d] if d < len(p) else -7 for p in prefixes])
        moved = trie.advance(states, step)
        states = torch.where(torch.tensor([d < len(p) for p in prefixes]), moved, states)
    mask = trie.allowed_mask(states)
    assert mask.shape == (len(prefixes), VOCAB) and mask.dtype == torch.bool
    for b, prefix in enumerate(prefixes):
        assert torch.nonzero(mask[b]).flatten().tolist() == trie.allowed(prefix)
        assert int(states[b]) == trie.state(prefix)


def test_leaves_are_names_in_order():
    sequences = [[5, 6, EOS], [5, EOS], [9, EOS]]
    trie = make_trie(sequences)
    states = trie.start(3)
    for d in range(3):
        tokens = torch.tensor([s[d] if d < len(s) else EOS for s in sequences])
        states = torch.where(trie.name_ids(states) >= 0, states, trie.advance(states, tokens))
    assert trie.name_ids(states).tolist() == [0, 1, 2]
    assert trie.allowed_mask(states).sum() == 0  # a finished name allows nothing


def test_build_rejects_bad_sequences():
    with pytest.raises(ValueError, match="end with the eos"):
        build_csr(np.array([5, 6]), np.array([2]), EOS)
    with pytest.raises(ValueError, match="only appear at the end"):
        build_csr(np.array([5, EOS, 6, EOS]), np.array([4]), EOS)
    with pytest.raises(ValueError, match="duplicate"):
        build_csr(np.array([5, EOS, 5, EOS]), np.array([2, 2]), EOS)


def test_csr_is_compact():
    rng = np.random.default_rng(0)
    bodies = {tuple(rng.integers(3, 5000, size=rng.integers(1, 12))) for _ in range(5000)}
    trie = make_trie([list(b) + [EOS] for b in bodies])
    nbytes = sum(getattr(trie._csr, name).nbytes for name in ARRAYS)
    assert nbytes / trie.n_nodes <= 12.5  # int32 offsets per internal node, token + child per edge
