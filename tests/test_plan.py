"""engine.plan: the out-of-sample period rules on tiny hand-made calendars, with the answers worked out by hand."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from engine.plan import PeriodError, Plan, PortfolioPlan, Training, plan_period, plan_portfolio, with_warmup

T = pd.Timestamp


def days(first: str, last: str) -> pd.DatetimeIndex:
    return pd.date_range(first, last, freq="D", name="datetime")


TEN = days("2020-01-01", "2020-01-10")  # bars 1..10 January
SEEN = Training(first_bar=T("2019-06-01"), last_bar=T("2020-01-04"), name="sp500", sha256="aaa")  # to 4 January


# ------------------------------------------------------------------------------------ one instrument
def test_a_baseline_trades_the_whole_data():
    assert plan_period(TEN, data_name="x") == Plan(start=T("2020-01-01"), end=T("2020-01-10"), bars=10)


def test_start_and_end_are_inclusive():
    plan = plan_period(TEN, data_name="x", start=T("2020-01-03"), end=T("2020-01-05"))
    assert (plan.start, plan.end, plan.bars) == (T("2020-01-03"), T("2020-01-05"), 3)


def test_dates_between_bars_snap_to_the_bars_inside_and_too_few_are_refused():
    weekdays = pd.bdate_range("2020-01-01", "2020-01-10")  # 1, 2, 3, 6, 7, 8, 9, 10 January
    plan = plan_period(weekdays, data_name="x", start=T("2020-01-04"), end=T("2020-01-07 12:00"))
    assert (plan.start, plan.end, plan.bars) == (T("2020-01-06"), T("2020-01-07"), 2)
    with pytest.raises(PeriodError) as exc:
        plan_period(weekdays, data_name="x", start=T("2020-01-04"), end=T("2020-01-05"))
    assert str(exc.value) == "--start/--end select 0 bar(s) of x (2020-01-01..2020-01-10); need at least 2"
    with pytest.raises(PeriodError, match=r"select 1 bar\(s\) of x"):
        plan_period(weekdays, data_name="x", start=T("2020-01-10"))


def test_an_agent_starts_after_the_last_bar_it_saw():
    plan = plan_period(TEN, data_name="sp500", training=SEEN, data_sha256="aaa")
    assert plan == Plan(start=T("2020-01-05"), end=T("2020-01-10"), bars=6)  # out-of-sample: no warning
    assert plan_period(TEN, data_name="nasdaq", training=SEEN).start == T("2020-01-05")  # other data: same date


def test_data_that_ends_before_the_training_data_is_refused():
    with pytest.raises(PeriodError) as exc:
        plan_period(days("2019-01-01", "2020-01-04"), data_name="old.csv", training=SEEN)
    assert str(exc.value) == ("old.csv ends 2020-01-04, before the agent's training data does (2020-01-04); "
                              "pass --start to backtest in-sample or use newer data")


def test_an_explicit_start_inside_the_training_dates_is_flagged_in_sample():
    warning = "warning: the period overlaps the agent's training period (2019-06-01 .. 2020-01-04"
    # the agent's own data (by name or by content): no need to say which
    for kw in (dict(data_name="sp500"), dict(data_name="copy.csv", data_sha256="aaa")):
        plan = plan_period(TEN, start=T("2020-01-03"), training=SEEN, **kw)
        assert plan.notes == (f"{warning}): results are IN-SAMPLE",)
        assert plan.start == T("2020-01-03") and plan.bars == 8
    # other data: the agent's data is named
    plan = plan_period(TEN, data_name="nasdaq", start=T("2020-01-03"), training=SEEN, data_sha256="bbb")
    assert plan.notes == (f"{warning}, on sp500): results are IN-SAMPLE",)
    # a universe agent saw every member up to the same date: its members are named, even for one of them
    universe = dataclasses.replace(SEEN, name="us", members=(("nasdaq", "n1"), ("sp500", "s1")))
    plan = plan_period(TEN, data_name="nasdaq", start=T("2020-01-03"), training=universe, data_sha256="n1")
    assert plan.notes == (f"{warning}, on 2 instruments (nasdaq, sp500)): results are IN-SAMPLE",)


def test_a_period_that_ends_before_the_training_data_began_is_out_of_sample():
    early = plan_period(days("2019-01-01", "2019-05-31"), data_name="sp500", start=T("2019-01-01"), training=SEEN)
    assert early.notes == () and early.bars == 151


def test_the_warm_up_must_fit_in_the_data_up_to_the_period_end():
    plan = plan_period(TEN, data_name="x", start=T("2020-01-03"), end=T("2020-01-06"))  # bars 3..6
    with pytest.raises(PeriodError) as exc:
        with_warmup(plan, TEN, 6, data_name="x")  # 6 bars up to the 6th: none left for a signal
    assert str(exc.value) == "x up to 2020-01-06 has 6 bars; the agent needs 6 bars of warm-up before its first signal"
    # warm-up 4: the first signal comes at the 5th bar, inside the period: noted
    noted = with_warmup(plan, TEN, 4, data_name="x")
    assert noted.notes == ("note: the first 4 bars of x are the agent's warm-up: no signal there",)
    assert dataclasses.replace(noted, notes=()) == plan
    # warm-up 2: the 3rd bar, the period's first, already has a signal: nothing to say
    assert with_warmup(plan, TEN, 2, data_name="x") is plan


def test_a_plan_is_frozen():
    plan = plan_period(TEN, data_name="x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.start = T("2020-01-02")


def test_training_reads_the_agent_card():
    card = {"name": "us_daily", "sha256": "u", "first_bar": "1999-01-04", "last_bar_used": "2014-12-31 00:00:00",
            "universe": {"nasdaq": {"sha256": "n"}, "sp500": {"sha256": "s"}}}
    seen = Training.from_card(card)
    assert seen == Training(first_bar=T("1999-01-04"), last_bar=T("2014-12-31"), name="us_daily", sha256="u",
                            members=(("nasdaq", "n"), ("sp500", "s")))
    assert seen.described() == "2 instruments (nasdaq, sp500)" and seen.dates() == "1999-01-04 .. 2014-12-31"
    single = Training.from_card({k: v for k, v in card.items() if k != "universe"})
    assert single.members == () and single.described() == "us_daily"


# ------------------------------------------------------------------------------------ a universe
def test_a_universe_leaves_out_members_without_a_period_or_a_warm_up():
    indexes = {
        "d": days("2020-01-06", "2020-01-12"),  # 7 bars, from the 6th: traded
        "a": TEN,  # traded
        "b": days("2020-01-01", "2020-01-03"),  # ends before the training data does: no period
        "c": days("2020-01-05", "2020-01-07"),  # 3 bars, no more than the warm-up
    }
    plan = plan_portfolio(indexes, data_name="mine", training=SEEN, warmup=3)
    assert plan == PortfolioPlan(
        start=T("2020-01-05"),  # the first bar of any member after the training data (a's and c's)
        end=T("2020-01-12"),
        symbols=("a", "d"),  # symbol order
        left_out=("b", "c"),
        notes=(
            "note: left out of the portfolio and its benchmark, fewer than 2 bars in 2020-01-05 .. 2020-01-12: "
            "b (2020-01-01 .. 2020-01-03)",
            "note: left out of the portfolio and its benchmark, fewer bars than the agent's 3 of warm-up: c (3 bars)",
            "note: the first 3 bars of d are the agent's warm-up: no signal there",  # a's warm-up ended on the 3rd
        ),
    )


def test_a_universe_period_inside_the_training_dates_names_the_members_in_sample():
    universe = dataclasses.replace(SEEN, name="us", members=(("b", "1"), ("a", "2")))
    indexes = {"a": TEN, "b": days("2020-01-04", "2020-01-20")}
    plan = plan_portfolio(indexes, data_name="us", training=universe, warmup=0, start=T("2020-01-02"),
                          end=T("2020-01-15"))
    assert (plan.start, plan.end, plan.symbols) == (T("2020-01-02"), T("2020-01-15"), ("a", "b"))
    assert plan.notes == ("warning: for a, b (2 of 2 instruments) the period overlaps the agent's training period "
                          "(2019-06-01 .. 2020-01-04, on 2 instruments (a, b)): results are IN-SAMPLE",)


def test_a_universe_without_any_period_is_refused():
    old = {"x": days("2019-01-01", "2019-12-31"), "y": days("2019-06-01", "2020-01-03")}
    with pytest.raises(PeriodError) as exc:
        plan_portfolio(old, data_name="old", training=SEEN, warmup=2)
    assert str(exc.value) == ("old ends 2020-01-03, before the agent's training data does (2020-01-04); "
                              "pass --start to backtest in-sample or use newer data")
    with pytest.raises(PeriodError) as exc:
        plan_portfolio({"y": old["y"], "x": old["x"]}, data_name="old", training=SEEN, warmup=2,
                       start=T("2020-01-03"))
    assert str(exc.value) == ("--start/--end select fewer than 2 bars of every instrument of old (y 2019-06-01.."
                              "2020-01-03, x 2019-01-01..2019-12-31) or too few for the agent's 2 bars of warm-up; "
                              "need at least 2")
