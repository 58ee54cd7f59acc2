import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.data.dataset import LazySequenceDataset
from agents.data.pooled import PooledBatchSampler, PooledSequenceDataset, epoch_seed, shuffled_ids

L = 4
SIZES = (10, 7, 12)
# ranges in a deliberately mixed order; instrument 2 has two ranges with a gap (bar 9 is no window end)
RANGES = [(2, 5, 9), (0, 3, 10), (1, 3, 7), (2, 10, 12)]


def _hand_made(sizes=SIZES, n_features=2):
    """features[i][t] = [1000*i + t, -(1000*i + t), ...]: a row's value names its instrument and bar."""
    features, labels = [], []
    for i, n in enumerate(sizes):
        code = 1000.0 * i + np.arange(n, dtype=np.float32)
        cols = [code * (1 if j % 2 == 0 else -1) + 0.25 * (j // 2) for j in range(n_features)]
        features.append(np.ascontiguousarray(np.stack(cols, axis=1), dtype=np.float32))
        labels.append((code + 0.5).astype(np.float32))
    return features, labels


def _expected_windows(ranges):
    """(instrument, end) of every window, in id order, spelled out."""
    return [(i, t) for i, lo, hi in ranges for t in range(lo, hi)]


def _to_files(tmp_path: Path, arrays, prefix):
    out = []
    for i, a in enumerate(arrays):
        path = tmp_path / f"{prefix}{i}.npy"
        np.save(path, a)
        out.append(np.load(path, mmap_mode="r"))
    return out


# ------------------------------------------------------------------------------------------- windows


def test_every_window_stays_in_its_instrument_and_ends_where_its_id_says():
    features, labels = _hand_made()
    ds = PooledSequenceDataset(features, labels, L, RANGES)
    expected = _expected_windows(RANGES)
    assert len(ds) == len(expected) == 4 + 7 + 4 + 2
    inst, end = ds.ends(np.arange(len(ds)))
    assert list(zip(inst.tolist(), end.tolist())) == expected
    x, y = ds.batch(np.arange(len(ds)))
    assert x.shape == (len(ds), L, 2) and x.dtype == torch.float32 and y.dtype == torch.float32
    for k, (i, t) in enumerate(expected):
        codes = x[k, :, 0].numpy()
        assert (codes // 1000 == i).all(), f"window {k} mixes instruments: {codes}"  # one instrument
        np.testing.assert_array_equal(codes - 1000 * i, np.arange(t - L + 1, t + 1))  # consecutive bars ending at t
        np.testing.assert_array_equal(x[k, :, 1].numpy(), -codes)
        assert y[k].item() == 1000 * i + t + 0.5  # the label of the window's last bar


def test_batch_order_follows_ids_across_instruments():
    features, labels = _hand_made()
    ds = PooledSequenceDataset(features, labels, L, RANGES)
    ids = np.array([16, 0, 9, 4, 4, 15, 3])  # mixed instruments, a repeat
    x, y = ds.batch(ids)
    expected = _expected_windows(RANGES)
    for k, g in enumerate(ids):
        i, t = expected[g]
        assert x[k, -1, 0].item() == 1000 * i + t and y[k].item() == 1000 * i + t + 0.5
    x1, y1 = ds[9]
    torch.testing.assert_close(x1, x[2])
    assert x1.shape == (L, 2) and y1.shape == ()
    xb, yb = ds[torch.tensor(ids)]
    torch.testing.assert_close(xb, x)


def test_single_instrument_is_bit_equal_to_lazy_dataset():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(300, 5)).astype(np.float32)
    labels = rng.integers(0, 2, 300).astype(np.float32)
    labels[:30] = np.nan
    lo, hi = 40, 290
    pooled = PooledSequenceDataset([feats], [labels], 16, [(0, lo, hi)])
    lazy = LazySequenceDataset(feats, labels, 16, index=np.arange(lo, hi))
    assert len(pooled) == len(lazy)
    ids = rng.permutation(len(lazy))[:97]
    xp, yp = pooled.batch(ids)
    xl, yl = lazy.batch(ids)
    assert xp.numpy().tobytes() == xl.numpy().tobytes()
    assert yp.numpy().tobytes() == yl.numpy().tobytes()


def test_memmap_inputs_are_read_from_the_files_and_equal_in_memory(tmp_path):
    features, labels = _hand_made(n_features=3)
    mm_f, mm_l = _to_files(tmp_path, features, "f"), _to_files(tmp_path, labels, "y")
    # a slice of a memmap (starting at bar 2) is a file region at another offset: same windows, shifted
    mm_f[0], mm_l[0] = mm_f[0][2:], mm_l[0][2:]
    features[0], labels[0] = features[0][2:], labels[0][2:]
    ranges = [(2, 5, 9), (0, 3, 8), (1, 3, 7), (2, 10, 12)]
    mem = PooledSequenceDataset(features, labels, L, ranges)
    disk = PooledSequenceDataset(mm_f, mm_l, L, ranges)
    assert all(src.file is not None for src in disk._fsrc + disk._lsrc)  # pread, not the mapping
    ids = np.random.default_rng(1).permutation(len(mem))
    xm, ym = mem.batch(ids)
    xd, yd = disk.batch(ids)
    assert xd.numpy().tobytes() == xm.numpy().tobytes() and yd.numpy().tobytes() == ym.numpy().tobytes()
    mixed = PooledSequenceDataset([features[0], mm_f[1], mm_f[2]], [mm_l[0], labels[1], mm_l[2]], L, ranges)
    xx, yx = mixed.batch(ids)  # some instruments from files, some from memory, in one batch
    assert xx.numpy().tobytes() == xm.numpy().tobytes() and yx.numpy().tobytes() == ym.numpy().tobytes()
    x0, _ = disk.batch([ranges[0][2] - ranges[0][1] + 4])  # instrument 0, end bar 7 of the slice = bar 9 of the file
    np.testing.assert_array_equal(x0[0, :, 0].numpy(), [6, 7, 8, 9])


def test_a_truncated_file_is_an_error_naming_it(tmp_path):
    features, labels = _hand_made(sizes=(50,))
    mm = _to_files(tmp_path, features, "f")[0]
    ds = PooledSequenceDataset([mm], labels, L, [(0, L - 1, 50)])
    with open(mm.filename, "r+b") as fh:
        fh.truncate(mm.offset + 20 * mm.strides[0])  # bars 20.. are gone
    ds.batch([0, 5])  # bars < 20 still read
    ds.close()
    with pytest.raises(ValueError, match="closed"):
        ds.batch([0])
    ds = PooledSequenceDataset([mm], labels, L, [(0, L - 1, 50)])
    with pytest.raises(OSError, match="f0.npy.*shorter"):
        ds.batch([0, 40])


def _rss_file_kib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    raise KeyError


@pytest.mark.skipif(not Path("/proc/self/status").exists() or "RssFile" not in Path("/proc/self/status").read_text(),
                    reason="needs Linux /proc/self/status RssFile")
def test_gathering_from_a_memmap_does_not_map_its_pages(tmp_path):
    # 64 MiB of features: reading windows through the mapping maps large folios (the whole file
    # after a few hundred random windows on ext4); pread leaves this process's RSS alone
    n, f = 1_000_000, 16
    path = tmp_path / "big.npy"
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, f))
    for lo in range(0, n, 1 << 17):
        mm[lo : lo + (1 << 17)] = lo
    del mm
    feats = np.load(path, mmap_mode="r")
    ds = PooledSequenceDataset([feats], [np.zeros(n, np.float32)], 32, [(0, 31, n)])
    ds.batch([0])
    before = _rss_file_kib()
    rng = np.random.default_rng(0)
    for _ in range(8):
        ds.batch(rng.integers(0, len(ds), 1024))
    assert _rss_file_kib() - before < 4 * 1024, "pages of the feature file became resident in the process"


# ------------------------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize("per_symbol", [False, True])
def test_normalisation_equals_normalising_first(per_symbol):
    rng = np.random.default_rng(2)
    features = [rng.normal(3.0, 2.0, size=(n, 3)).astype(np.float32) for n in SIZES]
    labels = [rng.integers(0, 2, n).astype(np.float32) for n in SIZES]
    shape = (len(SIZES), 3) if per_symbol else (3,)
    mean = rng.normal(size=shape)  # float64, as prepare.py computes them
    std = rng.uniform(0.5, 2.0, size=shape)
    ds = PooledSequenceDataset(features, labels, L, RANGES, mean, std)
    m32, s32 = mean.astype(np.float32), std.astype(np.float32)
    normed = [(x - (m32[i] if per_symbol else m32)) / (s32[i] if per_symbol else s32) for i, x in enumerate(features)]
    ref = PooledSequenceDataset(normed, labels, L, RANGES)
    ids = rng.permutation(len(ds))
    x, y = ds.batch(ids)
    xr, yr = ref.batch(ids)
    assert x.numpy().tobytes() == xr.numpy().tobytes()  # same float32 operations, gathered before or after
    torch.testing.assert_close(y, yr)
    # and within float32 rounding of the float64 arithmetic of prepare.py
    normed64 = [((x.astype(np.float64) - (mean[i] if per_symbol else mean)) / (std[i] if per_symbol else std))
                for i, x in enumerate(features)]
    x64, _ = PooledSequenceDataset([a.astype(np.float32) for a in normed64], labels, L, RANGES).batch(ids)
    np.testing.assert_allclose(x.numpy(), x64.numpy(), rtol=1e-5, atol=1e-6)
    raw, _ = PooledSequenceDataset(features, labels, L, RANGES).batch(ids)
    assert not np.allclose(x.numpy(), raw.numpy(), atol=0.1)  # it did normalise


def test_per_symbol_statistics_are_applied_to_their_own_instrument():
    features, labels = _hand_made()
    mean = np.array([[0.0, 0.0], [1000.0, -1000.0], [2000.0, -2000.0]])
    std = np.array([[1.0, 1.0], [1.0, 1.0], [2.0, 2.0]])
    ds = PooledSequenceDataset(features, labels, L, RANGES, mean, std)
    x, _ = ds.batch(np.arange(len(ds)))
    for k, (i, t) in enumerate(_expected_windows(RANGES)):
        bars = np.arange(t - L + 1, t + 1, dtype=np.float32)
        np.testing.assert_array_equal(x[k, :, 0].numpy(), bars / (2.0 if i == 2 else 1.0))


# ------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize("ranges, message", [
    ([(0, 2, 10)], r"lo < seq_len-1 = 3"),
    ([(1, 3, 8)], r"hi > 7"),
    ([(3, 3, 5)], r"instrument 3 is not in \[0, 3\)"),
    ([(0, 6, 5)], r"lo > hi"),
    ([(0, 3, 8), (1, 3, 4), (0, 7, 10)], r"\(0, 3, 8\) and \(0, 7, 10\) overlap"),
    ([(2, 3, 12), (2, 6, 6), (2, 9, 10)], r"overlap"),  # an empty range in between does not hide it
    ([(0, 3.0, 8)], r"integers"),
    ([(0, 3)], r"triples"),
])
def test_bad_ranges_are_refused(ranges, message):
    features, labels = _hand_made()
    with pytest.raises(ValueError, match=message):
        PooledSequenceDataset(features, labels, L, ranges)


def test_bad_inputs_are_refused():
    features, labels = _hand_made()
    with pytest.raises(ValueError, match="float32"):
        PooledSequenceDataset([features[0].astype(np.float64)], labels[:1], L, [(0, 3, 5)])
    with pytest.raises(ValueError, match=r"labels\[1\] must be a numeric \(7,\)"):
        PooledSequenceDataset(features, [labels[0], labels[0], labels[2]], L, RANGES)
    with pytest.raises(ValueError, match="2 label arrays"):
        PooledSequenceDataset(features, labels[:2], L, RANGES)
    with pytest.raises(ValueError, match="3 columns"):
        PooledSequenceDataset([features[0], np.zeros((7, 3), np.float32)], labels[:2], L, [(0, 3, 5)])
    with pytest.raises(ValueError, match=r"shape \(2,\) \(pooled\) or \(3, 2\)"):
        PooledSequenceDataset(features, labels, L, RANGES, np.zeros(3), np.ones(3))
    with pytest.raises(ValueError, match="std finite and > 0"):
        PooledSequenceDataset(features, labels, L, RANGES, np.zeros(2), np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="both mean and std"):
        PooledSequenceDataset(features, labels, L, RANGES, np.zeros(2), None)
    ds = PooledSequenceDataset(features, labels, L, RANGES)
    with pytest.raises(IndexError, match=r"\[0, 17\)"):
        ds.batch([0, 17])
    with pytest.raises(ValueError, match="1-D integer"):
        ds.batch([0.5])


def test_ids_of_and_ranges():
    features, labels = _hand_made()
    ds = PooledSequenceDataset(features, labels, L, RANGES)
    assert ds.ranges.tolist() == [list(r) for r in RANGES] and not ds.ranges.flags.writeable
    assert ds.ids_of(2).tolist() == [0, 1, 2, 3, 15, 16]
    assert ds.ids_of(1).tolist() == list(range(11, 15))
    inst, end = ds.ends(ds.ids_of(2))
    assert inst.tolist() == [2] * 6 and end.tolist() == [5, 6, 7, 8, 10, 11]
    short = PooledSequenceDataset([features[0], features[1][:2]], [labels[0], labels[1][:2]], L, [(0, 3, 10)])
    assert len(short) == 7  # an instrument shorter than a window simply has none
    with pytest.raises(ValueError, match="instrument must lie in"):
        ds.ids_of(3)
    empty = PooledSequenceDataset(features, labels, L, [(0, 5, 5)])
    assert len(empty) == 0 and list(empty.iter_batches(4, shuffle=True)) == []


# ------------------------------------------------------------------------------------------- epochs


def _epoch_labels(ds, **kw):
    return np.concatenate([y.numpy() for _, y in ds.iter_batches(5, **kw)])


def test_shuffled_epochs_cover_every_window_once_and_replay():
    features, labels = _hand_made()
    ds = PooledSequenceDataset(features, labels, L, RANGES)
    all_labels = np.sort(ds.batch(np.arange(len(ds)))[1].numpy())
    e0 = _epoch_labels(ds, shuffle=True, seed=7, epoch=0)
    e1 = _epoch_labels(ds, shuffle=True, seed=7, epoch=1)
    np.testing.assert_array_equal(np.sort(e0), all_labels)  # each window exactly once (labels are distinct)
    np.testing.assert_array_equal(np.sort(e1), all_labels)
    assert not np.array_equal(e0, e1)  # epochs differ
    np.testing.assert_array_equal(_epoch_labels(ds, shuffle=True, seed=7, epoch=0), e0)  # and replay
    assert not np.array_equal(_epoch_labels(ds, shuffle=True, seed=8, epoch=0), e0)
    np.testing.assert_array_equal(_epoch_labels(ds), ds.batch(np.arange(len(ds)))[1].numpy())  # in order
    # windows and labels travel together
    for x, y in ds.iter_batches(5, shuffle=True, seed=1):
        np.testing.assert_array_equal(x[:, -1, 0].numpy() + 0.5, y.numpy())


def test_batch_sampler_blocks_and_drop_last():
    sampler = PooledBatchSampler(23, 5, shuffle=True, seed=3, epoch=2)
    blocks = list(sampler)
    assert len(sampler) == len(blocks) == 5 and [len(b) for b in blocks] == [5, 5, 5, 5, 3]
    np.testing.assert_array_equal(np.concatenate(blocks), shuffled_ids(23, epoch_seed(3, 2)))
    dropped = list(PooledBatchSampler(23, 5, shuffle=True, seed=3, epoch=2, drop_last=True))
    assert len(dropped) == 4 and np.array_equal(np.concatenate(dropped), np.concatenate(blocks)[:20])
    big = np.concatenate(list(PooledBatchSampler(200_003, 1000, shuffle=True)))  # several 64K blocks
    np.testing.assert_array_equal(big, shuffled_ids(200_003, epoch_seed(0, 0)))


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_with_the_batch_sampler_matches_iter_batches(tmp_path, workers):
    features, labels = _hand_made(sizes=(60, 45, 80))
    ranges = [(0, 3, 60), (1, 3, 45), (2, 3, 80)]
    ds = PooledSequenceDataset(_to_files(tmp_path, features, "f"), _to_files(tmp_path, labels, "y"), L, ranges)
    loader = torch.utils.data.DataLoader(
        ds, sampler=PooledBatchSampler(len(ds), 16, shuffle=True, seed=5, epoch=3), batch_size=None,
        num_workers=workers,
    )
    got = list(loader)
    want = list(ds.iter_batches(16, shuffle=True, seed=5, epoch=3))
    assert len(got) == len(want)
    for (xg, yg), (xw, yw) in zip(got, want):
        torch.testing.assert_close(xg, xw)
        torch.testing.assert_close(yg, yw)


def test_pickling_a_memmap_dataset_does_not_copy_the_data(tmp_path):
    n = 100_000
    feats = np.random.default_rng(0).normal(size=(n, 8)).astype(np.float32)
    labels = np.arange(n, dtype=np.float32)
    ds = PooledSequenceDataset(_to_files(tmp_path, [feats], "f"), _to_files(tmp_path, [labels], "y"), 8,
                               [(0, 7, n)], np.zeros(8), np.ones(8))
    blob = pickle.dumps(ds)
    assert len(blob) < 10_000  # the 3.2 MB of features travel as a file name
    back = pickle.loads(blob)
    ids = np.array([0, 5, 99_000])
    for a, b in zip(back.batch(ids), ds.batch(ids)):
        assert a.numpy().tobytes() == b.numpy().tobytes()
    in_memory = PooledSequenceDataset([feats], [labels], 8, [(0, 7, n)])
    assert len(pickle.dumps(in_memory)) > feats.nbytes  # in-memory arrays are pickled as they are


# ------------------------------------------------------------------------------------------- shuffled_ids


@pytest.mark.parametrize("n", [1, 2, 3, 7, 1000, 4097])
def test_shuffled_ids_is_a_bijection(n):
    for seed in (0, 1, 12345, -3, 2**70):
        perm = shuffled_ids(n, seed)
        assert perm.dtype == np.int64 and perm.shape == (n,)
        np.testing.assert_array_equal(np.sort(perm), np.arange(n))


def test_shuffled_ids_chunks_concatenate_to_the_whole():
    n = 4097
    whole = shuffled_ids(n, 99)
    cuts = [0, 1, 2, 100, 1024, 1025, 4000, 4097]
    parts = [shuffled_ids(n, 99, lo, hi) for lo, hi in zip(cuts, cuts[1:])]
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    assert shuffled_ids(n, 99, 5, 5).size == 0
    np.testing.assert_array_equal(shuffled_ids(n, 99, start=4000), whole[4000:])


def test_shuffled_ids_is_pinned():
    # the order must not change between versions or machines: a resumed run replays its epochs
    assert shuffled_ids(10, 0).tolist() == [0, 8, 1, 7, 3, 2, 5, 4, 6, 9]
    assert shuffled_ids(1000, 42, 0, 8).tolist() == [57, 660, 293, 654, 792, 765, 133, 917]


def test_shuffled_ids_depends_on_the_seed_and_is_not_the_identity():
    n = 1000
    orders = [shuffled_ids(n, s) for s in range(5)]
    for a in range(5):
        assert (orders[a] != np.arange(n)).mean() > 0.98
        for b in range(a):
            assert (orders[a] != orders[b]).mean() > 0.98


def test_shuffled_ids_looks_uniform():
    n, seeds = 1000, 400
    perms = np.stack([shuffled_ids(n, s) for s in range(seeds)])
    # mean displacement |p(i) - i| of a uniform permutation is (n^2 - 1) / (3n) ~ 333.3
    assert abs(np.abs(perms - np.arange(n)).mean() - (n * n - 1) / (3 * n)) < 5
    # where each position's value falls: a 10 x 10 table (position decile x value decile) over all seeds
    table = np.zeros((10, 10))
    np.add.at(table, (np.broadcast_to(np.arange(n) // 100, perms.shape), perms // 100), 1)
    expected = seeds * n / 100
    chi2 = ((table - expected) ** 2 / expected).sum()
    assert chi2 < 160  # 81 degrees of freedom: the 99.999th percentile is ~140
    # successive outputs are not correlated
    r = np.corrcoef(perms[:, :-1].ravel(), perms[:, 1:].ravel())[0, 1]
    assert abs(r) < 0.02


def test_shuffled_ids_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n must be an integer >= 0"):
        shuffled_ids(-1, 0)
    with pytest.raises(ValueError, match="seed must be an integer"):
        shuffled_ids(5, 1.5)
    with pytest.raises(ValueError, match="start <= stop <= n"):
        shuffled_ids(5, 0, 3, 6)
    with pytest.raises(ValueError, match="start <= stop <= n"):
        shuffled_ids(5, 0, 4, 3)
    assert shuffled_ids(0, 0).size == 0


def test_memmaps_that_cannot_be_read_with_pread_still_work_and_say_so(tmp_path, caplog):
    features, labels = _hand_made()
    _to_files(tmp_path, features, "f")
    cow = [np.load(tmp_path / f"f{i}.npy", mmap_mode="c") for i in range(3)]  # copy-on-write: not pread
    with caplog.at_level("WARNING", logger="agents.data.pooled"):
        ds = PooledSequenceDataset(cow, labels, L, RANGES)
    assert caplog.text.count("read through their mappings") == 1 and "3 array(s)" in caplog.text
    ids = np.arange(len(ds))
    want = PooledSequenceDataset(features, labels, L, RANGES).batch(ids)
    for a, b in zip(ds.batch(ids), want):
        assert a.numpy().tobytes() == b.numpy().tobytes()
