"""Binarized data (write, memory-map, detect damage), length-bucketed batching and collation."""
import json
import tracemalloc

import numpy as np
import pytest
import torch

from nmt.data.binarized import (
    FORMAT,
    ParallelData,
    SplitWriter,
    check_source_vocab,
    collate,
    make_batches,
    token_budget,
    vocab_fingerprint,
    write_json,
)
from nmt.errors import DataError
from nmt.text.vocab import Vocab


def write_data_dir(directory, splits, src_vocab=tuple(f"w{i}" for i in range(50)), tgt_vocab_size=50):
    """A data directory like prepare_data.py writes, from {split: [(src_ids, tgt_ids), ...]}."""
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "splits": {}, "files": {},
            "source": {"kind": "wordpiece", "vocab_size": len(src_vocab),
                       "vocab_sha256": vocab_fingerprint(list(src_vocab))},
            "target": {"vocab_size": tgt_vocab_size}}
    for split, pairs in splits.items():
        w = SplitWriter(directory, split, flush_tokens=7)   # tiny flushes exercise the chunked writes
        for n, (s, t) in enumerate(pairs, 1):
            w.add(s, t, line_number=n)
        meta["splits"][split] = w.close()
    meta["files"]["source.json"] = write_json(directory / "source.json", {"kind": "wordpiece"})
    (directory / "meta.json").write_text(json.dumps(meta))
    return directory


def random_pairs(n, rng, max_len=12, vocab=50):
    return [(rng.integers(4, vocab, rng.integers(1, max_len)).tolist(),
             rng.integers(4, vocab, rng.integers(1, max_len)).tolist()) for _ in range(n)]


@pytest.fixture
def pairs():
    return random_pairs(300, np.random.default_rng(1))


@pytest.fixture
def data_dir(tmp_path, pairs):
    return write_data_dir(tmp_path / "bin", {"train": pairs, "valid": pairs[:5]})


def test_round_trip_and_lengths(data_dir, pairs):
    data = ParallelData(data_dir, "train", verify=True)
    assert len(data) == len(pairs)
    for i, (s, t) in enumerate(pairs):
        got_s, got_t = data.pair(i)
        assert got_s.tolist() == s and got_t.tolist() == t
    assert data.src_lengths.tolist() == [len(s) for s, _ in pairs]
    assert data.tgt_lengths.tolist() == [len(t) for _, t in pairs]
    assert data.line_numbers.tolist() == list(range(1, len(pairs) + 1))
    assert data.pair(-1)[0].tolist() == pairs[-1][0]
    with pytest.raises(IndexError):
        data.pair(len(pairs))
    assert len(ParallelData(data_dir, "valid")) == 5
    assert data.source_config == {"kind": "wordpiece"}


def test_empty_split_opens(tmp_path):
    data = ParallelData(write_data_dir(tmp_path, {"test": []}), "test", verify=True)
    assert len(data) == 0 and data.src_lengths.shape == (0,)


def test_opening_memory_maps_instead_of_reading(tmp_path):
    # 5,000 pairs x 2,000 ids per side = 80 MB on disk; opening must not load them.
    rng = np.random.default_rng(0)
    long_pair = (rng.integers(0, 30000, 2000).tolist(), rng.integers(0, 30000, 2000).tolist())
    d = tmp_path / "big"
    d.mkdir()
    w = SplitWriter(d, "train")
    for n in range(5000):
        w.add(*long_pair, line_number=n + 1)
    meta = {"format": FORMAT, "splits": {"train": w.close()}}
    (d / "meta.json").write_text(json.dumps(meta))
    assert (d / "train.src.bin").stat().st_size == 5000 * 2000 * 4
    tracemalloc.start()
    data = ParallelData(d, "train")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 2_000_000, f"opening allocated {peak} bytes"   # the lengths arrays only
    assert isinstance(data._bin["src"], np.memmap) and isinstance(data._bin["tgt"], np.memmap)
    s, t = data.pair(4321)
    assert np.shares_memory(s, data._bin["src"]) and s.tolist() == long_pair[0]
    assert data.src_lengths.sum() == 5000 * 2000


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "train.tgt.bin").write_bytes((d / "train.tgt.bin").read_bytes()[:-4]), "train.tgt.bin: truncated"),
    (lambda d: (d / "train.src.idx").unlink(), "train.src.idx: missing"),
    (lambda d: (d / "meta.json").unlink(), "meta.json: missing"),
    (lambda d: (d / "meta.json").write_text("{not json"), "meta.json: corrupt"),
    (lambda d: (d / "meta.json").write_text('{"format": "other/9"}'), "format 'other/9'"),
])
def test_damaged_directory_names_the_file(data_dir, damage, message):
    damage(data_dir)
    with pytest.raises(DataError, match=message):
        ParallelData(data_dir, "train")


def test_corrupt_contents_found_by_verify(data_dir):
    path = data_dir / "train.src.bin"
    raw = bytearray(path.read_bytes())
    raw[10] ^= 0xFF
    path.write_bytes(bytes(raw))
    ParallelData(data_dir, "train")                      # same size: the cheap checks pass
    with pytest.raises(DataError, match=r"train\.src\.bin: contents do not match the sha256"):
        ParallelData(data_dir, "train", verify=True)


def test_verify_names_an_id_outside_the_vocabulary(data_dir):
    """An id past the vocabulary (with meta.json's sha256 matching it, so only the range check can tell)
    is a DataError naming the file and the position, not an IndexError in the embedding later."""
    from nmt.data.binarized import file_sha256
    path = data_dir / "train.tgt.bin"
    ids = np.fromfile(path, dtype=np.int32)
    ids[7] = 50                                           # the target vocabulary has 50 symbols: 0..49
    ids.tofile(path)
    meta = json.loads((data_dir / "meta.json").read_text())
    meta["splits"]["train"]["files"]["train.tgt.bin"]["sha256"] = file_sha256(path)
    (data_dir / "meta.json").write_text(json.dumps(meta))
    ParallelData(data_dir, "train")                       # the cheap checks pass
    with pytest.raises(DataError, match=r"train\.tgt\.bin: id 50 at position 7 is outside the target vocabulary "
                                        r"of 50 symbols .*prepare the data again"):
        ParallelData(data_dir, "train", verify=True)


def test_inconsistent_offsets_detected(data_dir):
    path = data_dir / "train.tgt.idx"
    idx = np.fromfile(path, dtype=np.int64)
    idx[-1] += 1                                          # same size, wrong last offset
    idx.tofile(path)
    with pytest.raises(DataError, match=r"train\.tgt\.idx: offsets do not match"):
        ParallelData(data_dir, "train")


def test_missing_dir_and_split(tmp_path, data_dir):
    with pytest.raises(DataError, match="data directory not found"):
        ParallelData(tmp_path / "nope", "train")
    with pytest.raises(DataError, match=r"no split 'test' \(has: train, valid\)"):
        ParallelData(data_dir, "test")


def test_check_source_vocab(data_dir):
    vocab = [f"w{i}" for i in range(50)]
    check_source_vocab(data_dir, vocab)
    with pytest.raises(DataError, match="different source vocabulary"):
        check_source_vocab(data_dir, vocab[:-1] + ["other"])


# ----------------------------------------------------------------------------- batching

@pytest.fixture
def lengths():
    rng = np.random.default_rng(7)
    return rng.integers(1, 60, 2000), rng.integers(1, 80, 2000)


def padded_tokens(batch, src, tgt):
    return len(batch) * max(src[batch].max(), tgt[batch].max() + 1)


@pytest.mark.parametrize("max_sentences, max_tokens", [(500, None), (64, None), (500, 1500), (7, 300)])
def test_batches_cover_every_pair_once_within_limits(lengths, max_sentences, max_tokens):
    src, tgt = lengths
    batches = make_batches(src, tgt, max_sentences=max_sentences, max_tokens=max_tokens, seed=3, epoch=1)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(src)))
    assert all(1 <= len(b) <= max_sentences for b in batches)
    if max_tokens is not None:
        assert all(padded_tokens(b, src, tgt) <= max_tokens for b in batches)
        # the greedy cut is tight: on average batches are well filled, not one pair each
        assert np.mean([padded_tokens(b, src, tgt) for b in batches]) > 0.5 * max_tokens


def test_batches_group_similar_lengths(lengths):
    src, tgt = lengths
    batches = make_batches(src, tgt, max_sentences=50)
    width = np.maximum(src, tgt + 1)
    spread = np.mean([width[b].max() - width[b].min() for b in batches])
    # 2000 pairs over ~80 padded widths: a batch of 50 spans about two widths, where random
    # batches would span almost the whole range
    assert spread <= 2.0


def test_batches_reproducible_and_shuffled_per_epoch(lengths):
    src, tgt = lengths
    as_lists = lambda bs: [b.tolist() for b in bs]  # noqa: E731
    a = make_batches(src, tgt, max_sentences=32, seed=5, epoch=0)
    assert as_lists(a) == as_lists(make_batches(src, tgt, max_sentences=32, seed=5, epoch=0))
    assert as_lists(a) != as_lists(make_batches(src, tgt, max_sentences=32, seed=5, epoch=1))
    assert as_lists(a) != as_lists(make_batches(src, tgt, max_sentences=32, seed=6, epoch=0))


@pytest.mark.parametrize("num_shards", [2, 3, 8])
def test_rank_shards_equal_and_disjoint(lengths, num_shards):
    """The data-parallel batches (nmt.train.distributed.shard_batches, the one sharding scheme): the
    same count on every rank, no pair on two ranks, each rank's batches within the limits."""
    from nmt.train.distributed import shard_batches
    src, tgt = lengths
    shards = [shard_batches(src, tgt, max_sentences=37, max_tokens=2000, seed=1, epoch=2,
                            num_shards=num_shards, shard=k) for k in range(num_shards)]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) > 0
    flat = np.concatenate([np.concatenate(s) for s in shards])
    assert len(flat) == len(set(flat.tolist()))          # disjoint
    assert len(flat) > 0.8 * len(src)                    # only a few trailing batches are cut
    widths = np.maximum(np.asarray(src), np.asarray(tgt) + 1)
    assert all(len(b) <= 37 and len(b) * widths[b].max() <= 2000 for s in shards for b in s)
    one = shard_batches(src, tgt, max_sentences=37, max_tokens=2000, seed=1, epoch=2)
    assert [b.tolist() for b in one] == [b.tolist() for b in make_batches(src, tgt, max_sentences=37,
                                                                          max_tokens=2000, seed=1, epoch=2)]


def test_batching_errors(lengths):
    src, tgt = lengths
    with pytest.raises(DataError, match="alone exceeds max_tokens=50"):
        make_batches(src, tgt, max_tokens=50)
    with pytest.raises(DataError, match="differ in shape"):
        make_batches(src, tgt[:-1])
    assert make_batches([], []) == []


# ----------------------------------------------------------------------------- collate

def test_collate_shapes_and_content(data_dir, pairs):
    data = ParallelData(data_dir, "train")
    idx = [5, 0, 299, 42]
    b = collate(data, idx, src_pad_id=0)
    S = max(len(pairs[i][0]) for i in idx)
    T = max(len(pairs[i][1]) for i in idx) + 1
    assert b.src_ids.shape == b.src_mask.shape == (4, S)
    assert b.prev_tokens.shape == b.target.shape == (4, T)
    assert b.src_ids.dtype == b.prev_tokens.dtype == b.target.dtype == torch.long
    assert b.src_mask.dtype == torch.bool
    for row, i in enumerate(idx):
        s, t = pairs[i]
        assert b.src_ids[row, :len(s)].tolist() == s and b.src_mask[row].sum() == len(s)
        assert (b.src_ids[row, len(s):] == 0).all()
        assert b.prev_tokens[row, :len(t) + 1].tolist() == [Vocab.BOS] + t
        assert b.target[row, :len(t) + 1].tolist() == t + [Vocab.EOS]
        assert (b.prev_tokens[row, len(t) + 1:] == Vocab.PAD).all()
        assert (b.target[row, len(t) + 1:] == Vocab.PAD).all()
    assert b.num_tokens == int((b.target != Vocab.PAD).sum()) == sum(len(pairs[i][1]) + 1 for i in idx)
    assert b.indices.tolist() == idx and len(b) == 4
    moved = b.to("cpu")
    assert torch.equal(moved.target, b.target) and moved.num_tokens == b.num_tokens


def test_collate_uses_source_pad_id_and_rejects_bad_indices(data_dir):
    data = ParallelData(data_dir, "train")
    b = collate(data, [0, 1, 2], src_pad_id=-7)
    assert (b.src_ids[~b.src_mask] == -7).all()
    with pytest.raises(DataError, match="empty"):
        collate(data, [], src_pad_id=0)
    with pytest.raises(DataError, match="out of range"):
        collate(data, [300], src_pad_id=0)


def test_batches_collate_end_to_end_respects_max_tokens(data_dir):
    data = ParallelData(data_dir, "train")
    for idx in make_batches(data.src_lengths, data.tgt_lengths, max_sentences=100, max_tokens=120):
        b = collate(data, idx, src_pad_id=0)
        assert b.src_ids.numel() <= 120 and b.target.numel() <= 120


def _label_heavy_lengths(n: int = 5000, seed: int = 0):
    """Pair lengths shaped like the demo corpora: 40% one-to-three-token labels, the rest sentences."""
    rng = np.random.default_rng(seed)
    short = rng.random(n) < 0.4
    tgt = np.where(short, rng.integers(1, 4, n), rng.integers(10, 60, n))
    return tgt + rng.integers(0, 3, n) + 2, tgt            # source: about as long, + [CLS]/[SEP]


def test_token_batches_give_every_update_the_same_number_of_target_tokens():
    # The fix for too-short outputs: the loss of an update is a mean over its target tokens, so
    # batches of a FIXED sentence count make a token of a one-word label weigh up to 28x more than
    # a token of a paragraph (128 vs 3,577 tokens per update below); the model then learns to stop
    # early. Token-bucketed batches (--batching tokens, the default) hold about the same number of
    # target tokens each, and still max_sentences sentences on average.
    src, tgt = _label_heavy_lengths()

    def target_tokens(batches):                             # y + EOS per batch
        return np.array([tgt[b].sum() + len(b) for b in batches])

    by_sentences = target_tokens(make_batches(src, tgt, max_sentences=64, seed=1))
    budget, cap = token_budget(src, tgt, sentences=64)
    token_batches = make_batches(src, tgt, max_sentences=cap, max_tokens=budget, seed=1)
    by_tokens = target_tokens(token_batches)
    spread = lambda t: np.quantile(t, 0.95) / np.quantile(t, 0.05)    # noqa: E731
    assert spread(by_sentences) > 20
    assert spread(by_tokens) < 2
    assert 0.8 * 64 <= len(src) / len(token_batches) <= 1.2 * 64      # ~64 sentences per batch on average
    assert sorted(int(i) for b in token_batches for i in b) == list(range(len(src)))


def test_token_budget_fits_the_widest_pair_and_rejects_nonsense():
    assert token_budget([3, 3, 100], [1, 1, 1], sentences=1) == (100, 33)   # mean width 35.3 < widest 100
    with pytest.raises(DataError):
        token_budget([], [], sentences=8)
    with pytest.raises(DataError):
        token_budget([3], [2], sentences=0)
