"""agents.data.feed: device-resident windows and the prefetching feed, run on the CPU device (what CI has)."""

import numpy as np
import pytest
import torch

from agents.data.dataset import LazySequenceDataset
from agents.data.feed import ResidentWindows, epoch_ids, fits_on_device, prefetch, resident_bytes
from agents.data.pooled import PooledSequenceDataset


def _lazy(n=500, f=3, seq_len=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, f)).astype(np.float32)
    y = (rng.random(n) < 0.4).astype(np.float32)
    y[rng.random(n) < 0.2] = np.nan  # unlabelled bars are never window ends
    ends = np.flatnonzero(~np.isnan(y))
    ends = ends[ends >= seq_len - 1]
    return LazySequenceDataset(x, y, seq_len, index=ends)


def _pooled(tmp_path, per_symbol=False):
    rng = np.random.default_rng(1)
    feats, labs = [], []
    for i, n in enumerate((120, 80, 200)):
        x = (rng.standard_normal((n, 4)) * (i + 1) + i).astype(np.float32)
        path = tmp_path / f"f{i}.npy"
        np.save(path, x)
        feats.append(np.load(path, mmap_mode="r"))  # file-backed, as from the feature store
        labs.append((rng.random(n) < 0.5).astype(np.float32))
    ranges = [(0, 9, 60), (1, 9, 70), (2, 20, 150), (0, 70, 110), (2, 160, 200)]
    shape = (3, 4) if per_symbol else (4,)
    mean = rng.standard_normal(shape).astype(np.float32)
    std = (rng.random(shape) + 0.5).astype(np.float32)
    return PooledSequenceDataset(feats, labs, 10, ranges, mean, std)


def test_resident_batches_equal_the_lazy_dataset_bit_for_bit():
    ds = _lazy()
    res = ResidentWindows(ds, "cpu")
    ids = np.random.default_rng(3).permutation(len(ds))[:97]
    x, y = res.batch(ids)
    ex, ey = ds.batch(ids)
    assert x.shape == ex.shape == (97, 8, 3)
    assert torch.equal(x, ex)
    assert torch.equal(y, ey)  # window ends are labelled bars: no NaN
    # the whole window: rows end-7 .. end of the raw features
    end = int(ds.ends[ids[0]])
    np.testing.assert_array_equal(x[0].numpy(), ds.features[end - 7 : end + 1])


@pytest.mark.parametrize("per_symbol", [False, True])
def test_resident_batches_equal_the_pooled_dataset_bit_for_bit(tmp_path, per_symbol):
    ds = _pooled(tmp_path, per_symbol)
    res = ResidentWindows(ds, "cpu")
    ids = np.random.default_rng(4).permutation(len(ds))
    x, y = res.batch(ids)
    ex, ey = ds.batch(ids)
    assert torch.equal(x, ex) and torch.equal(y, ey)
    # no window crosses into the next instrument: the first window of instrument 1 starts at its row 0
    first_of_1 = int(ds.ids_of(1)[0])
    inst, end = ds.ends([first_of_1])
    assert (inst[0], end[0]) == (1, 9)
    raw = np.asarray(ds.feature_arrays[1][0:10])
    mean, std = ds.normalisation
    m, s = (mean[1], std[1]) if per_symbol else (mean, std)
    np.testing.assert_array_equal(res.batch([first_of_1])[0][0].numpy(), (raw - m) / s)


def test_an_epoch_has_the_host_order_for_a_seed_and_differs_by_epoch(tmp_path):
    for ds in (_lazy(), _pooled(tmp_path)):
        res = ResidentWindows(ds, "cpu")
        got = [b for b in res.iter_batches(64, shuffle=True, seed=7, epoch=2)]
        host = [ds.batch(ids) for ids in epoch_ids(ds, 64, 7, 2)]
        assert len(got) == len(host) == -(-len(ds) // 64)
        for (x, y), (ex, ey) in zip(got, host):
            assert torch.equal(x, ex) and torch.equal(y, ey)
        ids_e2 = np.concatenate(list(epoch_ids(ds, 64, 7, 2)))
        assert sorted(ids_e2.tolist()) == list(range(len(ds)))  # every window once
        assert not np.array_equal(ids_e2, np.concatenate(list(epoch_ids(ds, 64, 7, 3))))


def test_the_lazy_epoch_order_is_the_host_paths():
    """`epoch_ids` is what `LazySequenceDataset.iter_batches` draws with the trainer's per-epoch generator."""
    ds = _lazy()
    gen = torch.Generator().manual_seed(5 * 100_003 + 1)
    host = list(ds.iter_batches(50, shuffle=True, generator=gen))
    ours = list(epoch_ids(ds, 50, 5, 1))
    assert len(host) == len(ours)
    for (x, _), ids in zip(host, ours):
        assert torch.equal(x, ds.batch(ids)[0])


def test_a_sibling_shares_the_device_arrays_and_refuses_other_arrays():
    ds = _lazy()
    val = LazySequenceDataset(ds.features, ds.labels, ds.seq_len, index=ds.ends[-40:])
    res = ResidentWindows(ds, "cpu")
    sib = res.sibling(val)
    assert sib._x is res._x and len(sib) == 40
    assert torch.equal(sib.batch(np.arange(40))[0], val.batch(np.arange(40))[0])
    other = _lazy(seed=1)
    with pytest.raises(ValueError, match="same arrays"):
        res.sibling(other)


def test_resident_sizes_and_bounds():
    ds = _lazy(n=500, f=3)
    assert resident_bytes(ds) == 500 * 4 * 4 + len(ds) * 8
    assert ResidentWindows(ds, "cpu").nbytes == resident_bytes(ds)
    ok, why = fits_on_device(ds, "cpu")
    assert ok and "host memory" in why
    with pytest.raises(IndexError):
        ResidentWindows(ds, "cpu").batch([len(ds)])


def test_prefetch_yields_every_batch_in_order_and_stops_when_closed():
    ds = _lazy()
    batches = list(ds.iter_batches(32))
    got = list(prefetch(iter(batches), "cpu", depth=2))
    assert len(got) == len(batches)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(got, batches))

    produced = []

    def slow():
        for b in batches:
            produced.append(1)
            yield b

    it = prefetch(slow(), "cpu", depth=2)
    next(it)
    it.close()  # joins the thread: it stops after at most depth + 2 batches, not the whole epoch
    assert len(produced) <= 5 < len(batches)


def test_prefetch_raises_the_producers_error():
    def broken():
        yield torch.zeros(2, 3), torch.zeros(2)
        raise OSError("disk gone")

    it = prefetch(broken(), "cpu")
    next(it)
    with pytest.raises(OSError, match="disk gone"):
        next(it)


# ---------------------------------------------------------------------------------------------- trainer


def _fit_with(feed, prep, cfg):
    from agents.training.trainer import fit

    res = fit(cfg.__class__(**{**cfg.to_dict(), "feed": feed, "features": tuple(cfg.features)}), prep,
              checkpoint_dir=None, progress=False)
    return res


def test_every_feed_trains_the_same_model_bit_for_bit():
    """host, resident and prefetch draw the same batches in the same order: identical weights and losses."""
    from agents.training.config import TrainConfig
    from agents.data.prepare import prepare
    from conftest import TINY

    cfg = TrainConfig(**TINY)
    prep = prepare(cfg)
    runs = {feed: _fit_with(feed, prep, cfg) for feed in ("host", "resident", "prefetch")}
    ref = runs["host"]
    assert ref["feed"] == "host" and runs["resident"]["feed"] == "resident" and runs["prefetch"]["feed"] == "prefetch"
    for feed in ("resident", "prefetch"):
        got = runs[feed]
        assert [r["train_loss"] for r in got["state"]["history"]] == [r["train_loss"] for r in ref["state"]["history"]]
        assert [r["val_loss"] for r in got["state"]["history"]] == [r["val_loss"] for r in ref["state"]["history"]]
        for k, v in ref["model"].state_dict().items():
            assert torch.equal(v, got["model"].state_dict()[k]), (feed, k)


def test_batch_size_is_measured_and_the_smallest_near_the_fastest_wins(monkeypatch):
    import agents.training.trainer as trainer
    from agents.model.losses import FocalLoss
    from agents.model.config import ModelConfig
    from agents.model.transformer import TransformerAgent

    model = TransformerAgent(ModelConfig(n_features=3, seq_len=8, d_model=8, n_heads=1, n_layers=1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ds = _lazy()
    chosen, table = trainer.measure_batch_size(model, FocalLoss(), lambda b: ds.batch(np.arange(b)),
                                               torch.device("cpu"),
                                               candidates=(16, 32, 64), steps=2, warmup=1, max_windows=50)
    assert [r["batch_size"] for r in table] == [16, 32]  # 64 > the 50 windows there are
    assert chosen in (16, 32) and all(r["windows_per_s"] > 0 for r in table)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # timed on a copy

    # the rule itself, on made-up timings: the smallest batch within 10% of the fastest (2048) wins
    speeds = iter([1.0 / 900, 1.0 / 1000, 1.0 / 1040])  # seconds per window at 512, 1024, 2048
    fake = {}

    def fake_step(model, opt, scaler, loss_fn, xb, yb, amp):
        fake["now"] = fake.get("now", 0.0) + len(yb) * fake["per_window"]

    def clock():
        return fake.get("now", 0.0)

    monkeypatch.setattr(trainer, "train_step", fake_step)
    monkeypatch.setattr(trainer.time, "perf_counter", clock)

    def batch_of(b):
        fake["per_window"] = next(speeds)
        return torch.zeros(b, 8, 3), torch.zeros(b)

    chosen, table = trainer.measure_batch_size(model, FocalLoss(), batch_of, torch.device("cpu"),
                                               candidates=(512, 1024, 2048), steps=2, warmup=1)
    assert [round(r["windows_per_s"]) for r in table] == [900, 1000, 1040]
    assert chosen == 1024  # 900 < 0.9 * 1040 = 936; 1000 >= 936
