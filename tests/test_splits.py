"""Tests for labeling.splits: purged train/val split and walk-forward folds over label spans."""

import numpy as np
import pytest

from datafeeds import load_ohlcv
from labeling import Fold, events_within, label_spans, purged_train_val_split, triple_barrier_labels, walk_forward_folds


@pytest.fixture(scope="module")
def sp500_spans():
    df = load_ohlcv("sp500")
    ev, t1 = label_spans(triple_barrier_labels(df, horizon=20), df.index)
    return len(df), ev, t1


# ---------------------------------------------------------------- purged_train_val_split


def _hand_spans():
    ev = np.arange(10)
    t1 = ev + 1
    t1[3] = 8  # one long label reaching into validation
    return ev, t1


def test_split_hand_default_purge_is_longest_span():
    ev, t1 = _hand_spans()
    train, val = purged_train_val_split(ev, t1, val_fraction=0.3)
    np.testing.assert_array_equal(val, [7, 8, 9])
    # purge = max span 5 -> train events need 7 - t - 1 >= 5, i.e. t <= 1
    np.testing.assert_array_equal(train, [0, 1])


def test_split_hand_explicit_purge_and_embargo():
    ev, t1 = _hand_spans()
    train, _ = purged_train_val_split(ev, t1, val_fraction=0.3, purge=0)
    np.testing.assert_array_equal(train, [0, 1, 2, 4, 5])  # 3 (t1=8) and 6 (t1=7) reach validation
    train, _ = purged_train_val_split(ev, t1, val_fraction=0.3, purge=1, embargo=1)
    np.testing.assert_array_equal(train, [0, 1, 2, 4])  # gap of 2 bars -> t <= 4
    assert train.dtype == np.int64


def test_split_on_real_labels(sp500_spans):
    _, ev, t1 = sp500_spans
    train, val = purged_train_val_split(ev, t1, val_fraction=0.2)
    n_val = round(0.2 * len(ev))
    np.testing.assert_array_equal(val, ev[-n_val:])
    assert np.isin(train, ev).all() and (np.diff(train) > 0).all()
    rows = np.searchsorted(ev, train)
    assert (t1[rows] < val[0]).all()
    assert val[0] - train[-1] - 1 >= 20
    # nothing needlessly dropped: exactly the events inside the purge window are gone
    assert train[-1] == val[0] - 21


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(val_fraction=0.0), "val_fraction"),
        (dict(val_fraction=1.0), "val_fraction"),
        (dict(purge=-1), "purge"),
        (dict(embargo=1.5), "embargo"),
        (dict(purge=100), "no training events"),
        (dict(event_index=np.array([0, 2, 1, 3, 4, 5, 6, 7, 8, 9])), "increasing"),
        (dict(t1_index=np.arange(10) - 1), "before its event"),
        (dict(t1_index=np.arange(9)), "equal lengths"),
        (dict(event_index=np.arange(10.0)), "integer"),
        (dict(event_index=np.array([0]), t1_index=np.array([1])), "at least 2"),
    ],
)
def test_split_rejects_bad_input(kwargs, match):
    args = dict(event_index=np.arange(10), t1_index=np.arange(10) + 1, val_fraction=0.3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        purged_train_val_split(**args)


# ---------------------------------------------------------------- walk_forward_folds


def test_folds_hand_example():
    folds = walk_forward_folds(100, n_folds=2, test_frac=0.2, purge=2, embargo=1)
    # tail 20 bars -> test blocks of (20 - 1) // 2 = 9 separated by 1; last ends at bar 99
    assert folds == [
        Fold(0, train=range(0, 68), val=range(70, 79), test=range(81, 90)),
        Fold(1, train=range(10, 78), val=range(80, 89), test=range(91, 100)),
    ]
    anchored = walk_forward_folds(100, n_folds=2, test_frac=0.2, purge=2, embargo=1, scheme="anchored")
    assert [f.train for f in anchored] == [range(0, 68), range(0, 78)]
    assert [(f.val, f.test) for f in anchored] == [(f.val, f.test) for f in folds]


@pytest.mark.parametrize("scheme", ["rolling", "anchored"])
@pytest.mark.parametrize("n_bars, n_folds, test_frac, purge, embargo, val_size", [
    (1000, 5, 0.3, 20, 0, None),
    (5031, 4, 0.5, 20, 20, 300),
    (777, 3, 0.25, 0, 7, None),
    (50, 1, 0.2, 3, 3, 5),
])
def test_fold_layout_invariants(scheme, n_bars, n_folds, test_frac, purge, embargo, val_size):
    folds = walk_forward_folds(
        n_bars, n_folds=n_folds, scheme=scheme, test_frac=test_frac, purge=purge, embargo=embargo, val_size=val_size
    )
    assert [f.fold for f in folds] == list(range(n_folds))
    test_size = len(folds[0].test)
    for f in folds:
        assert len(f.train) > 0 and len(f.val) > 0 and len(f.test) == test_size
        assert f.val.start - f.train.stop >= purge and f.test.start - f.val.stop >= purge
        assert f.train.start >= 0 and f.test.stop <= n_bars
        if val_size is not None:
            assert len(f.val) == val_size
    for prev, nxt in zip(folds, folds[1:]):
        assert nxt.test.start - prev.test.stop == embargo  # consecutive, non-overlapping, in order
        assert nxt.train.stop > prev.train.stop
    assert folds[-1].test.stop == n_bars
    tail = int(n_bars * test_frac)
    assert folds[0].test.start >= n_bars - tail and folds[0].test.start - (n_bars - tail) < n_folds  # covers the tail
    starts = [f.train.start for f in folds]
    if scheme == "anchored":
        assert starts == [0] * n_folds
    else:
        assert starts[0] == 0 and all(b > a for a, b in zip(starts, starts[1:]))
        assert len({len(f.train) for f in folds}) == 1


def test_rolling_train_size():
    folds = walk_forward_folds(1000, n_folds=3, test_frac=0.3, purge=10, train_size=200)
    assert all(len(f.train) == 200 and f.train.stop == f.val.start - 10 for f in folds)


def test_fold_label_spans_stay_inside_their_segment(sp500_spans):
    n_bars, ev, t1 = sp500_spans
    folds = walk_forward_folds(n_bars, n_folds=4, test_frac=0.4, purge=20, embargo=20)
    for f in folds:
        for seg, nxt in ((f.train, f.val), (f.val, f.test)):
            inside = (ev >= seg.start) & (ev < seg.stop)
            assert inside.any() and (t1[inside] < nxt.start).all()
    for prev, nxt in zip(folds, folds[1:]):
        inside = (ev >= prev.test.start) & (ev < prev.test.stop)
        assert (t1[inside] < nxt.test.start).all()


def test_events_within():
    ev = np.array([0, 2, 4, 6, 8])
    t1 = np.array([3, 3, 9, 7, 9])
    np.testing.assert_array_equal(events_within(ev, t1, range(0, 8)), [0, 2, 6])
    np.testing.assert_array_equal(events_within(ev, t1, range(2, 10)), [2, 4, 6, 8])
    assert events_within(ev, t1, range(5, 6)).size == 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_bars=10, n_folds=5), "too few bars"),
        (dict(n_bars=100, n_folds=2, test_frac=0.2, purge=40), "too few bars"),
        (dict(n_bars=1000, n_folds=2, train_size=900), "too few bars"),
        (dict(n_bars=1000, n_folds=2, scheme="anchored", train_size=100), "rolling"),
        (dict(n_bars=1000, n_folds=2, scheme="expanding"), "scheme"),
        (dict(n_bars=1000, n_folds=0), "n_folds"),
        (dict(n_bars=1000, n_folds=2, test_frac=1.0), "test_frac"),
        (dict(n_bars=1000, n_folds=2, purge=-1), "purge"),
        (dict(n_bars=1000, n_folds=2, val_size=0), "val_size"),
    ],
)
def test_folds_reject_bad_input(kwargs, match):
    n_bars = kwargs.pop("n_bars")
    with pytest.raises(ValueError, match=match):
        walk_forward_folds(n_bars, **kwargs)


def test_calendar_cut_leaves_the_pooled_fraction_after_one_date_for_all():
    from labeling import calendar_cut

    a = np.arange(1, 11, dtype=np.int64)  # 10 bars, days 1..10
    b = np.arange(5, 11, dtype=np.int64)  # 6 bars, days 5..10 (listed later)
    cut = calendar_cut([a, b], 0.25)
    assert cut == 9 and (a >= cut).sum() + (b >= cut).sum() == 4  # 25% of 16 bars, both cut on day 9
    assert calendar_cut([a], 0.2) == 9 and calendar_cut([a], 0.5) == 6
    # a gap: the cut is day 3, so [1, 3] keeps one bar after it and [1, 2, 100, 101] two
    c = np.array([1, 2, 100, 101], dtype=np.int64)
    assert calendar_cut([c, np.array([1, 3], dtype=np.int64)], 0.5) == 3
    # ties: bars sharing the cut date all go after it (here 4 of 6, not 3)
    assert calendar_cut([c, np.array([1, 2], dtype=np.int64)], 0.5) == 2
    with pytest.raises(ValueError, match="fraction_after"):
        calendar_cut([a], 1.0)
    with pytest.raises(ValueError, match="integer timestamp"):
        calendar_cut([a.astype(float)], 0.2)


# ------------------------------------------------------------------ combinatorial purged CV (AFML ch. 12)
def test_cpcv_splits_by_hand():
    from labeling import cpcv_paths, cpcv_splits

    # 24 bars in 4 groups of 6: [0,6) [6,12) [12,18) [18,24); 2 test groups -> C(4,2) = 6 splits
    splits = cpcv_splits(24, 4, 2, purge=2, embargo=1)
    assert [s.test_groups for s in splits] == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    # test groups 1 and 3: train = [0, 6-2) and [12+1, 18-2): purge 2 before each test group, embargo 1 after
    s = splits[4]
    assert s.test == (range(6, 12), range(18, 24))
    assert s.train == (range(0, 4), range(13, 16))
    # test groups 0 and 1 together: train starts after the embargo, ends at the data
    assert splits[0].train == (range(13, 24),)
    # every group is tested in C(3,1) = 3 splits: 3 paths, each covering all 4 groups once
    paths = cpcv_paths(splits, 4)
    assert paths == [[(0, 0), (1, 0), (2, 1), (3, 2)], [(0, 1), (1, 3), (2, 3), (3, 4)],
                     [(0, 2), (1, 4), (2, 5), (3, 5)]]


def test_cpcv_never_trains_on_purged_or_test_bars():
    from labeling import cpcv_splits

    for sp in cpcv_splits(1000, 6, 2, purge=10, embargo=5, start=100):
        train = {b for r in sp.train for b in r}
        for t in sp.test:
            assert not train & set(range(t.start - 10, t.stop + 5))
        assert min(train) >= 100


def test_cpcv_refuses_impossible_geometry():
    from labeling import cpcv_splits

    with pytest.raises(ValueError, match="k_test must be < n_groups"):
        cpcv_splits(100, 4, 4)
    with pytest.raises(ValueError, match="too few bars"):
        cpcv_splits(7, 4, 1)
    with pytest.raises(ValueError, match="no training bars left"):
        cpcv_splits(20, 2, 1, purge=10, embargo=10)


def test_events_within_at_the_segment_edges_by_hand():
    from labeling import events_within

    # segment = bars 10..19 (range(10, 20)); a span counts when 10 <= t and t1 <= 19
    t = np.array([9, 10, 12, 15, 19, 20])
    t1 = np.array([15, 19, 20, 19, 19, 22])
    # (9, 15): starts one bar before: out; (10, 19): starts on the first bar, ends on the last: in;
    # (12, 20): ends one bar past: out; (15, 19): in; (19, 19): a one-bar span on the last bar: in; (20, 22): out
    assert events_within(t, t1, range(10, 20)).tolist() == [10, 15, 19]
