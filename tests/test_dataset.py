import pickle

import numpy as np
import pytest
import torch

from agents.data.dataset import LazySequenceDataset


def _eager_window(features, labels, end, seq_len):
    return features[end - seq_len + 1 : end + 1], labels[end]


@pytest.fixture
def small():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(50, 3)).astype(np.float32)
    labels = rng.integers(0, 2, size=50).astype(np.float32)
    labels[:5] = np.nan  # unlabelled warm-up bars
    return features, labels


def test_tiny_hand_made_windows():
    features = np.arange(12, dtype=np.float32).reshape(6, 2)  # row t = [2t, 2t+1]
    labels = np.array([0, 1, 0, 1, 1, 0])
    ds = LazySequenceDataset(features, labels, 3)
    assert len(ds) == 4
    assert ds.ends.tolist() == [2, 3, 4, 5]
    x, y = ds[0]
    assert x.tolist() == [[0, 1], [2, 3], [4, 5]]
    assert y.item() == 0 and y.dtype == torch.int64  # label of the window's LAST bar (2)
    x, y = ds[-1]
    assert x.tolist() == [[6, 7], [8, 9], [10, 11]]
    assert y.item() == 0


def test_items_equal_eager_windows(small):
    features, labels = small
    ds = LazySequenceDataset(features, labels, 7)
    assert len(ds) == 50 - 7 + 1
    for i in np.random.default_rng(1).integers(0, len(ds), 20):
        x, y = ds[int(i)]
        ex, ey = _eager_window(features, labels, int(i) + 6, 7)
        assert x.dtype == torch.float32 and x.shape == (7, 3)
        np.testing.assert_array_equal(x.numpy(), ex)
        np.testing.assert_array_equal(y.numpy(), ey)  # NaN == NaN here


def test_memmap_items_and_no_copy(tmp_path, small):
    features, labels = small
    path = tmp_path / "features.f32"
    mm = np.memmap(path, dtype=np.float32, mode="w+", shape=features.shape)
    mm[:] = features
    mm.flush()
    ro = np.memmap(path, dtype=np.float32, mode="r", shape=features.shape)
    ds = LazySequenceDataset(ro, labels, 5)
    assert np.shares_memory(ds.features, ro)  # kept by reference
    for i in [0, 3, 17, len(ds) - 1]:
        x, _ = ds[i]
        np.testing.assert_array_equal(x.numpy(), features[i : i + 5])
    xb, yb = ds.batch([0, 3, len(ds) - 1])
    np.testing.assert_array_equal(xb[2].numpy(), features[-5:])
    np.testing.assert_array_equal(yb.numpy(), labels[[4, 7, 49]])


def test_batch_equals_stacked_items(small):
    features, labels = small
    ds = LazySequenceDataset(features, labels, 4)
    pos = torch.tensor([5, 0, 46, 5, 12])
    xb, yb = ds.batch(pos)
    assert xb.shape == (5, 4, 3) and xb.dtype == torch.float32 and xb.is_contiguous()
    assert yb.shape == (5,) and yb.dtype == torch.float32
    items = [ds[int(p)] for p in pos]
    torch.testing.assert_close(xb, torch.stack([x for x, _ in items]))
    torch.testing.assert_close(yb, torch.stack([y for _, y in items]), equal_nan=True)


def test_default_collate_matches_batch(small):
    features, labels = small
    ds = LazySequenceDataset(features, labels, 4, index=np.arange(10, 30))
    loader = torch.utils.data.DataLoader(ds, batch_size=8, shuffle=False)
    x, y = next(iter(loader))
    xb, yb = ds.batch(np.arange(8))
    torch.testing.assert_close(x, xb)
    torch.testing.assert_close(y, yb)


def test_index_restricts_windows_by_end_bar(small):
    features, labels = small
    ends = np.array([9, 3, 49, 20])
    ds = LazySequenceDataset(features, labels, 4, index=ends)
    assert len(ds) == 4
    assert ds.ends.tolist() == [9, 3, 49, 20]
    x, y = ds[1]  # window ending at bar 3 = bars 0..3 (the earliest legal end)
    np.testing.assert_array_equal(x.numpy(), features[0:4])
    assert y.item() == pytest.approx(labels[3], nan_ok=True)
    x, y = ds[2]
    np.testing.assert_array_equal(x.numpy(), features[46:50])
    assert y.item() == labels[49]
    with pytest.raises(ValueError):
        ds.ends[0] = 0  # read-only


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"seq_len": 51}, "exceeds the 50 rows"),
        ({"seq_len": 0}, "positive integer"),
        ({"seq_len": 4, "index": [2, 10]}, "window end 2 < seq_len-1=3"),
        ({"seq_len": 4, "index": [10, 50]}, "window end 50 >= N=50"),
        ({"seq_len": 4, "index": [10, 11, 10]}, "duplicate window end 10"),
        ({"seq_len": 4, "index": [10.0, 11.0]}, "integer bar positions"),
        ({"seq_len": 4, "index": [[10]]}, "1-D"),
    ],
)
def test_bad_arguments(small, kwargs, match):
    features, labels = small
    with pytest.raises(ValueError, match=match):
        LazySequenceDataset(features, labels, **kwargs)


def test_bad_arrays(small):
    features, labels = small
    with pytest.raises(ValueError, match="float32"):
        LazySequenceDataset(features.astype(np.float64), labels, 4)
    with pytest.raises(ValueError, match="2-D"):
        LazySequenceDataset(features[:, 0], labels, 4)
    with pytest.raises(ValueError, match=r"shape \(50,\)"):
        LazySequenceDataset(features, labels[:-1], 4)
    ds = LazySequenceDataset(features, labels, 4)
    with pytest.raises(IndexError):
        ds[len(ds)]
    with pytest.raises(IndexError):
        ds.batch([0, len(ds)])


def test_iter_batches_covers_each_window_once_and_is_reproducible(small):
    features, labels = small
    ds = LazySequenceDataset(features, labels, 4, index=np.arange(3, 48))  # 45 windows
    # Tag each window by its first feature value, unique per start bar, to identify it.
    first_values = {float(features[e - 3, 0]): e for e in range(3, 48)}

    def epoch_ends(**kw):
        seen = []
        for xb, _ in ds.iter_batches(10, **kw):
            seen += [first_values[float(v)] for v in xb[:, 0, 0]]
        return seen

    ordered = epoch_ends(shuffle=False)
    assert ordered == list(range(3, 48))
    a = epoch_ends(shuffle=True, seed=7)
    assert sorted(a) == list(range(3, 48)) and a != ordered
    assert epoch_ends(shuffle=True, seed=7) == a
    assert epoch_ends(shuffle=True, seed=8) != a
    sizes = [len(y) for _, y in ds.iter_batches(10, shuffle=True, seed=7, drop_last=True)]
    assert sizes == [10, 10, 10, 10]
    # A shared generator advances: epochs differ, yet the sequence of epochs is reproducible.
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    e1, e2 = epoch_ends(shuffle=True, generator=g1), epoch_ends(shuffle=True, generator=g1)
    assert e1 != e2
    assert [epoch_ends(shuffle=True, generator=g2) for _ in range(2)] == [e1, e2]


def _rss_anon_bytes() -> int:
    # Anonymous RSS: pages the process allocated. File-backed pages of the memmap that reads
    # fault in are page cache (reclaimable) and would otherwise swamp the measurement.
    fields = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            fields[key] = value
    raw = fields.get("RssAnon") or fields["VmRSS"]
    return int(raw.split()[0]) * 1024


def test_memory_stays_flat_on_large_memmap(tmp_path):
    n_rows, n_feat, seq_len = 2_000_000, 16, 64  # eager windows would take 8.2 GB
    path = tmp_path / "big.f32"
    mm = np.memmap(path, dtype=np.float32, mode="w+", shape=(n_rows, n_feat))
    chunk = 250_000
    for lo in range(0, n_rows, chunk):
        mm[lo : lo + chunk] = np.arange(lo, lo + chunk, dtype=np.float32)[:, None]
    mm.flush()
    del mm
    features = np.memmap(path, dtype=np.float32, mode="r", shape=(n_rows, n_feat))
    labels = np.zeros(n_rows, dtype=np.float32)

    baseline = _rss_anon_bytes()
    ds = LazySequenceDataset(features, labels, seq_len)
    peak = baseline
    for k, (xb, _) in enumerate(ds.iter_batches(1024, shuffle=True, seed=0)):
        peak = max(peak, _rss_anon_bytes())
        if k == 49:
            break
    assert k == 49
    # Values equal bar numbers, so each window must be a run of consecutive integers.
    np.testing.assert_array_equal(xb[:, :, 0] - xb[:, :1, 0], np.broadcast_to(np.arange(seq_len), (1024, seq_len)))
    assert peak - baseline < 200 * 2**20


def test_pickle_ships_features_not_windows(small):
    features, labels = small
    ds = LazySequenceDataset(np.tile(features, (20, 1)), np.tile(labels, 20), 32)  # 1000 x 3
    blob = pickle.dumps(ds)
    assert len(blob) < 3 * ds.features.nbytes  # features + labels + ends; windows alone are 32x features
    back = pickle.loads(blob)
    xb, yb = back.batch([0, 500])
    xa, ya = ds.batch([0, 500])
    torch.testing.assert_close(xb, xa)
    torch.testing.assert_close(yb, ya, equal_nan=True)
