"""The agent card: every field a reader uses is validated at load (one line naming the file and the
field), and the model card ends its numbers with a one-line verdict whose test is stated."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from statistics import NormalDist

import onnx
import pytest

from agents.artifact.metadata import MAX_SEQ_LEN, METADATA_KEY, AgentFileError
from agents.artifact.runtime import OnnxAgent
from agents.artifact import verdict as verdict_module
from agents.artifact.verdict import ALPHA, auc_p_value, verdict

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "agent1.onnx"
_ITEM = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


# ------------------------------------------------------------------ helpers: tampered copies of an agent


def _keys(dotted: str) -> list:
    """'normalisation.std[3]' -> ['normalisation', 'std', 3]."""
    return [int(i) if i else name for name, i in _ITEM.findall(dotted)]


def _set(dotted, value):
    def edit(card):
        *parents, last = _keys(dotted)
        target = card
        for key in parents:
            target = target[key]
        target[last] = value
    return edit


def _delete(dotted):
    def edit(card):
        *parents, last = _keys(dotted)
        target = card
        for key in parents:
            target = target[key]
        del target[last]
    return edit


def _change(dotted, fn):
    """Replace the value at ``dotted`` by fn(value)."""
    def edit(card):
        *parents, last = _keys(dotted)
        target = card
        for key in parents:
            target = target[key]
        target[last] = fn(target[last])
    return edit


def _card_of(path) -> dict:
    proto = onnx.load(str(path), load_external_data=False)
    return json.loads({p.key: p.value for p in proto.metadata_props}[METADATA_KEY])


def _tampered(src, dst, edit) -> Path:
    """A copy of the agent at ``src`` whose card went through ``edit(card)`` (in place)."""
    proto = onnx.load(str(src))
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            card = json.loads(prop.value)
            edit(card)
            prop.value = json.dumps(card)  # allow_nan: a tampered file may hold NaN/Infinity
    onnx.save(proto, str(dst))
    return Path(dst)


def _inspect(path, *extra):
    return subprocess.run([sys.executable, "-m", "agents.inspect", str(path), *extra], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


# (id, edit of the card, the dotted field the error must name)
CASES = [
    ("mean-nan", _set("normalisation.mean[0]", math.nan), "normalisation.mean[0]"),
    ("mean-inf", _set("normalisation.mean[5]", math.inf), "normalisation.mean[5]"),
    ("mean-string", _set("normalisation.mean[2]", "0.1"), "normalisation.mean[2]"),
    ("mean-too-short", _change("normalisation.mean", lambda v: v[:-1]), "normalisation.mean"),
    ("std-zero", _set("normalisation.std[3]", 0.0), "normalisation.std[3]"),
    ("std-negative", _set("normalisation.std[1]", -0.5), "normalisation.std[1]"),
    ("std-nan", _set("normalisation.std[7]", math.nan), "normalisation.std[7]"),
    ("std-too-long", _change("normalisation.std", lambda v: v + [1.0]), "normalisation.std"),
    ("std-missing", _delete("normalisation.std"), "normalisation.std"),
    ("seq_len-negative", _set("seq_len", -1), "seq_len"),
    ("seq_len-zero", _set("seq_len", 0), "seq_len"),
    ("seq_len-huge", _set("seq_len", 10**9), "seq_len"),
    ("seq_len-over-max", _set("seq_len", MAX_SEQ_LEN + 1), "seq_len"),
    ("seq_len-bool", _set("seq_len", True), "seq_len"),
    ("seq_len-float", _set("seq_len", 16.0), "seq_len"),
    ("threshold-nan", _set("threshold", math.nan), "threshold"),
    ("threshold-negative", _set("threshold", -0.1), "threshold"),
    ("threshold-above-1", _set("threshold", 1.5), "threshold"),
    ("threshold-bool", _set("threshold", True), "threshold"),
    ("threshold-string", _set("threshold", "0.4"), "threshold"),
    ("features-reordered", _change("feature_names", lambda v: v[1:] + v[:1]), "feature_names"),
    ("features-dropped", _change("feature_names", lambda v: v[:-1]), "feature_names"),
    ("features-added", _change("feature_names", lambda v: v + ["extra"]), "feature_names"),
    ("features-duplicated", _change("feature_names", lambda v: v[:-1] + v[:1]), "feature_names"),
    ("features-not-strings", _set("feature_names[2]", 7), "feature_names[2]"),
    ("feature-spec-unknown", _set("features.features[0].name", "log_return"), "features"),
    ("feature-spec-list", _set("features", []), "features"),
    ("feature-param-huge", _set("features.features[1].params.period", 10**12), "features.features[1].params.period"),
    # with no window cap and a tiny threshold, computing fracdiff's weights would never end
    ("fracdiff-unbounded", _set("features.features[0]", {"name": "fracdiff", "params": {
        "d": 0.4, "threshold": 1e-12, "max_window": None}}), "features.features[0].params.max_window"),
    ("warmup-inconsistent", _change("warmup", lambda w: w + 1), "warmup"),
    ("warmup-negative", _set("warmup", -1), "warmup"),
    ("warmup-bool", _set("warmup", True), "warmup"),
    ("dataset-sha256-missing", _delete("dataset.sha256"), "dataset.sha256"),
    ("dataset-name-missing", _delete("dataset.name"), "dataset.name"),
    ("dataset-name-number", _set("dataset.name", 5), "dataset.name"),
    ("dataset-list", _set("dataset", ["sp500"]), "dataset"),
    ("first_bar-not-a-date", _set("dataset.first_bar", "yesterday"), "dataset.first_bar"),
    ("first_bar-after-last", _set("dataset.first_bar", "2030-01-01 00:00:00"), "dataset.first_bar"),
    ("last_bar-missing", _delete("dataset.last_bar_used"), "dataset.last_bar_used"),
    ("train-one-date", _change("dataset.train", lambda v: v[:1]), "dataset.train"),
    ("train-reversed", _change("dataset.train", lambda v: v[::-1]), "dataset.train"),
    ("validation-not-dates", _set("dataset.validation", ["x", "y"]), "dataset.validation[0]"),
    ("holdout-not-a-date", _set("dataset.holdout_start", 20150102), "dataset.holdout_start"),
    ("normalisation-list", _set("normalisation", [[0.0], [1.0]]), "normalisation"),
    ("tbm-list", _set("tbm", [1.5, 1.5, 20, 14]), "tbm"),
    ("tbm-horizon-zero", _set("tbm.horizon", 0), "tbm"),
    ("tbm-unknown-key", _set("tbm.ptt", 1.0), "tbm"),
    ("rules-list", _set("rules", [0.5, 1.5]), "rules"),
    ("rules-size-2", _set("rules.size_frac", 2.0), "rules"),
    ("rules-other-pt", _set("rules.pt", 9.0), "rules"),
    ("rules-other-threshold", _change("rules.threshold", lambda v: v / 2), "rules"),
    ("metrics-list", _set("metrics", []), "metrics"),
    ("metrics-auc-string", _set("metrics.val_auc", "0.51"), "metrics.val_auc"),
    ("metrics-logloss-nan", _set("metrics.val_logloss", math.nan), "metrics.val_logloss"),
    ("metrics-rate-string", _set("metrics.label_balance.val_positive_rate", "half"),
     "metrics.label_balance.val_positive_rate"),
    ("metrics-events-bool", _set("metrics.label_balance.val_events", True), "metrics.label_balance.val_events"),
    ("metrics-balance-list", _set("metrics.label_balance", [0.5]), "metrics.label_balance"),
    ("metrics-precision-above-1", _set("metrics.val_at_threshold.precision", 1.2),
     "metrics.val_at_threshold.precision"),
    ("model-list", _set("model", []), "model"),
    ("input_name-missing", _delete("input_name"), "input_name"),
    ("output_name-number", _set("output_name", 0), "output_name"),
    ("training_command-null", _set("training_command", None), "training_command"),
    ("walk_forward-list", _set("walk_forward", ["study", 0]), "walk_forward"),
    ("bar_seconds-zero", _set("dataset.bar_seconds", 0), "dataset.bar_seconds"),
    ("bar_seconds-string", _set("dataset.bar_seconds", "1d"), "dataset.bar_seconds"),
]
# One subprocess per case costs ~1 s: the CLI is checked on a representative subset.
CLI_CASES = {"std-zero", "seq_len-huge", "threshold-nan", "features-reordered", "dataset-sha256-missing",
             "dataset-name-missing", "metrics-auc-string", "warmup-inconsistent"}


@pytest.mark.parametrize("edit, field", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_tampered_card_is_refused_naming_the_field(tiny_agent, tmp_path, edit, field):
    path = _tampered(tiny_agent[0], tmp_path / "tampered.onnx", edit)
    with pytest.raises(AgentFileError) as info:
        OnnxAgent.load(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert f"'{field}'" in message
    assert "re-export" in message


@pytest.mark.parametrize("edit, field", [c[1:] for c in CASES if c[0] in CLI_CASES],
                         ids=[c[0] for c in CASES if c[0] in CLI_CASES])
def test_inspect_exits_2_with_one_line_on_a_tampered_card(tiny_agent, tmp_path, edit, field):
    path = _tampered(tiny_agent[0], tmp_path / "tampered.onnx", edit)
    done = _inspect(path)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert lines[0].startswith(f"error: {path}: ") and f"'{field}'" in lines[0]


def test_messages_say_what_the_value_is_and_must_be(tiny_agent, tmp_path):
    path = _tampered(tiny_agent[0], tmp_path / "std.onnx", _set("normalisation.std[3]", 0.0))
    with pytest.raises(AgentFileError) as info:
        OnnxAgent.load(path)
    assert str(info.value) == (f"{path}: metadata field 'normalisation.std[3]' is 0.0; must be a finite number > 0 "
                               "(the file was edited or corrupted: re-export the agent)")
    path = _tampered(tiny_agent[0], tmp_path / "sha.onnx", _delete("dataset.sha256"))
    with pytest.raises(AgentFileError, match=r"'dataset\.sha256' is missing; must be a string"):
        OnnxAgent.load(path)
    path = _tampered(tiny_agent[0], tmp_path / "warm.onnx", _change("warmup", lambda w: w + 1))
    card = _card_of(tiny_agent[0])
    with pytest.raises(AgentFileError, match=rf"'warmup' is {card['warmup'] + 1}; must be {card['warmup']} "):
        OnnxAgent.load(path)


def test_untouched_tiny_agent_loads_and_inspects_with_its_verdict(tiny_agent):
    agent = OnnxAgent.load(tiny_agent[0])
    assert agent.warmup == agent.meta["warmup"]
    done = _inspect(tiny_agent[0])
    assert done.returncode == 0, done.stderr
    assert f"verdict     {verdict(agent.meta['metrics'])}\n" in done.stdout
    assert "a bar every 1 day\n" in done.stdout  # the frequency run_backtest holds data to


def test_the_card_carries_the_trading_rules_and_older_cards_derive_them(tiny_agent, tmp_path):
    from labeling.rules import BarrierRules

    agent = OnnxAgent.load(tiny_agent[0])
    assert _card_of(tiny_agent[0])["rules"] == agent.rules.to_dict()
    assert agent.rules == BarrierRules.from_tbm(agent.tbm, agent.threshold)
    older = OnnxAgent.load(_tampered(tiny_agent[0], tmp_path / "older.onnx", _delete("rules")))
    assert older.rules == agent.rules


def test_card_without_validation_loads_and_has_no_verdict(tiny_agent, tmp_path):
    """A walk-forward refit's card: no validation block, no validation metrics."""
    def refit(card):
        card["dataset"]["validation"] = None
        m = card["metrics"]
        for key in ("val_auc", "val_logloss", "baseline_val_logloss", "val_loss", "val_at_threshold"):
            m.pop(key, None)
        m["label_balance"] = {k: v for k, v in m["label_balance"].items() if not k.startswith("val_")}
        card["walk_forward"] = {"study": "wf", "fold": 2, "test": ["2016-01-04 00:00:00", "2016-12-30 00:00:00"],
                                "best_trial": 3, "params": {"lr": 0.001}}
    path = _tampered(tiny_agent[0], tmp_path / "refit.onnx", refit)
    agent = OnnxAgent.load(path)
    assert verdict(agent.meta["metrics"]) == "no verdict: no validation events (e.g. a refit on train + validation)"
    done = _inspect(path)
    assert done.returncode == 0, done.stderr
    assert "verdict     no verdict: no validation events" in done.stdout
    assert "validation: none (refit on train + validation)" in done.stdout
    assert "walk-fwd    study wf fold 2, test 2016-01-04 00:00:00 .. 2016-12-30 00:00:00, best trial 3" in done.stdout


def test_shipped_agent_loads_and_its_verdict_is_no_better_than_the_linear_model():
    metrics = OnnxAgent.load(SHIPPED).meta["metrics"]
    assert verdict(metrics) == (
        "ranks better than chance, but no better than a linear model on the last bar's features: validation AUC "
        "0.574 (p=0.0002, one-sided Mann-Whitney vs 0.5, 785 events); better baseline logistic regression (last bar) "
        "AUC 0.496, difference +0.078 (95% CI -0.014..+0.154, block bootstrap): does not beat it; other baseline "
        "gradient boosting (LightGBM, last 16 bars) AUC 0.428; log-loss 0.672 vs the base rate's 0.695 (reported, "
        "not judged)"
    )
    done = _inspect(SHIPPED)
    assert done.returncode == 0, done.stderr
    assert "\nverdict     ranks better than chance, but no better than a linear model" in done.stdout
    assert "\nlinear      validation AUC 0.496, log-loss 0.6917 (logistic regression" in done.stdout
    assert "\ngbm         validation AUC 0.428, log-loss 0.7050 (gradient boosting (LightGBM" in done.stdout
    assert "\nloss        cross-entropy\n" in done.stdout
    assert "p-value is optimistic" in done.stdout


def test_inspect_help_does_not_load_the_runtime():
    code = ("import sys\nfrom agents.artifact import inspect\ntry:\n    inspect.main(['--help'])\n"
            "except SystemExit as e:\n    assert e.code == 0\n"
            "print(sorted(m for m in ('onnx', 'onnxruntime', 'pandas', 'torch') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"


# ------------------------------------------------------------------ the verdict's test


def test_auc_p_value_by_hand():
    # n_pos = n_neg = 5, AUC 0.8: U = 20, mean 12.5, variance 5*5*11/12 -> z = 7.5 / sqrt(275/12) = 1.5667
    assert auc_p_value(0.8, 5, 5) == pytest.approx(1 - NormalDist().cdf(7.5 / math.sqrt(275 / 12)), rel=1e-12)
    assert auc_p_value(0.8, 5, 5) == pytest.approx(0.058593, abs=1e-6)
    assert auc_p_value(0.5, 40, 60) == 0.5
    assert auc_p_value(0.3, 10, 10) == pytest.approx(1 - auc_p_value(0.7, 10, 10), rel=1e-12)


def test_auc_p_value_equals_scipy_mann_whitney():
    import numpy as np
    from scipy import stats
    rng = np.random.default_rng(7)
    for n_pos, n_neg, shift in ((30, 20, 0.2), (458, 320, 0.05), (7, 90, -0.4)):
        pos, neg = rng.normal(shift, 1, n_pos), rng.normal(0, 1, n_neg)
        res = stats.mannwhitneyu(pos, neg, alternative="greater", method="asymptotic", use_continuity=False)
        auc = res.statistic / (n_pos * n_neg)
        assert auc_p_value(float(auc), n_pos, n_neg) == pytest.approx(res.pvalue, rel=1e-9)


@pytest.mark.parametrize("args", [(1.5, 5, 5), (math.nan, 5, 5), (0.6, 0, 5), (0.6, 5, True), (0.6, 5.0, 5)])
def test_auc_p_value_rejects_bad_input(args):
    with pytest.raises(ValueError):
        auc_p_value(*args)


def _metrics(auc, events, rate, logloss=None, base=None, linear=None, gbm=None):
    m = {"val_auc": auc, "label_balance": {"val_events": events, "val_positive_rate": rate}}
    if logloss is not None:
        m.update(val_logloss=logloss, baseline_val_logloss=base)
    if linear is not None:
        m["linear_baseline"] = linear
    if gbm is not None:
        m["gbm_baseline"] = gbm
    return m


def _linear(auc, diff, low, high, pv=None):
    return {"val_auc": auc, "auc_difference": {"value": diff, "low": low, "high": high, "level": 0.95},
            "price_volume": pv}


def _gbm(auc, diff, low, high, lags=16):
    return {"val_auc": auc, "lags": lags, "auc_difference": {"value": diff, "low": low, "high": high, "level": 0.95}}


_P56 = "validation AUC 0.560 (p=0.0017, one-sided Mann-Whitney vs 0.5, 800 events)"  # 400 + 400 events


@pytest.mark.parametrize("metrics, expected", [
    # 400 + 400 events, AUC 0.56: z = 0.06*160000 / sqrt(160000*801/12) = 2.937, p = 0.0017
    (_metrics(0.56, 800, 0.5, 0.680, 0.693, _linear(0.52, 0.04, 0.01, 0.07)),
     f"evidence of skill beyond a linear model on the last bar's features: {_P56}; baseline logistic regression "
     "(last bar) AUC 0.520, difference +0.040 (95% CI +0.010..+0.070, block bootstrap): beats it; log-loss 0.680 "
     "vs the base rate's 0.693 (reported, not judged)"),
    # significant against 0.5, but the interval of the difference to the linear model holds 0
    (_metrics(0.56, 800, 0.5, 0.731, 0.696, _linear(0.556, 0.004, -0.03, 0.04)),
     f"ranks better than chance, but no better than a linear model on the last bar's features: {_P56}; "
     "baseline logistic regression (last bar) AUC 0.556, difference +0.004 (95% CI -0.030..+0.040, block "
     "bootstrap): does not beat it; log-loss 0.731 vs the base rate's 0.696 (reported, not judged)"),
    # a log-loss worse than the base rate's no longer decides anything
    (_metrics(0.56, 800, 0.5, 0.731, 0.696),
     f"evidence of ranking skill: {_P56}; no baseline recorded; log-loss 0.731 vs the base rate's 0.696 "
     "(reported, not judged)"),
    (_metrics(0.51, 778, 458 / 778, None, None, _linear(0.5, 0.01, -0.05, 0.07)),
     "no evidence of skill: validation AUC 0.510 (p=0.32, one-sided Mann-Whitney vs 0.5, 778 events); baseline "
     "logistic regression (last bar) AUC 0.500, difference +0.010 (95% CI -0.050..+0.070, block bootstrap): does "
     "not beat it"),
    (_metrics(0.65, 800, 0.5),
     "evidence of ranking skill: validation AUC 0.650 (p<0.0001, one-sided Mann-Whitney vs 0.5, 800 events); "
     "no baseline recorded"),
    (_metrics(0.45, 800, 0.5),
     "no evidence of skill: validation AUC 0.450 (p=0.99, one-sided Mann-Whitney vs 0.5, 800 events); "
     "no baseline recorded"),
    # book columns that encode the future: far above what price and volume alone give
    (_metrics(0.743, 800, 0.5, None, None, _linear(0.74, 0.003, -0.02, 0.03,
                                                    {"other_columns": ["ask_size", "bid_size"], "val_auc": 0.51})),
     "CHECK FOR LOOK-AHEAD in your data columns (ask_size, bid_size): validation AUC 0.743 is 0.23 above a linear "
     "model on price and volume alone (0.510): validation AUC 0.743 (p<0.0001, one-sided Mann-Whitney vs 0.5, "
     "800 events); baseline logistic regression (last bar) AUC 0.740, difference +0.003 (95% CI -0.020..+0.030, "
     "block bootstrap): does not beat it"),
    # 0.10 above is the margin: 0.09 is not flagged
    (_metrics(0.60, 800, 0.5, None, None, _linear(0.59, 0.01, -0.02, 0.04, {"other_columns": ["bid_size"],
                                                                          "val_auc": 0.51})),
     "ranks better than chance, but no better than a linear model on the last bar's features: validation AUC "
     "0.600 (p<0.0001, one-sided Mann-Whitney vs 0.5, 800 events); baseline logistic regression (last bar) AUC "
     "0.590, difference +0.010 (95% CI -0.020..+0.040, block bootstrap): does not beat it"),
])
def test_verdict_outcomes(metrics, expected):
    assert verdict(metrics) == expected


_GBM16 = "gradient boosting (LightGBM, last 16 bars)"


@pytest.mark.parametrize("metrics, expected", [
    # gradient boosting ranks better than the linear model: the agent is judged against it, and beats it
    (_metrics(0.56, 800, 0.5, None, None, _linear(0.52, 0.04, 0.01, 0.07), _gbm(0.53, 0.03, 0.005, 0.06)),
     f"evidence of skill beyond the best baseline (gradient boosting): {_P56}; better baseline {_GBM16} AUC 0.530, "
     "difference +0.030 (95% CI +0.005..+0.060, block bootstrap): beats it; other baseline logistic regression "
     "(last bar) AUC 0.520"),
    # ... and does not: it beats the linear model (interval above 0), but that is not the better baseline
    (_metrics(0.56, 800, 0.5, None, None, _linear(0.52, 0.04, 0.01, 0.07), _gbm(0.55, 0.01, -0.02, 0.04)),
     f"ranks better than chance, but no better than gradient boosting on the last 16 bars' features: {_P56}; "
     f"better baseline {_GBM16} AUC 0.550, difference +0.010 (95% CI -0.020..+0.040, block bootstrap): does not "
     "beat it; other baseline logistic regression (last bar) AUC 0.520"),
    # the other order: the linear model ranks better, so it decides, whatever the agent does against the GBM
    (_metrics(0.56, 800, 0.5, None, None, _linear(0.55, 0.01, -0.02, 0.04), _gbm(0.50, 0.06, 0.02, 0.09, lags=8)),
     f"ranks better than chance, but no better than a linear model on the last bar's features: {_P56}; better "
     "baseline logistic regression (last bar) AUC 0.550, difference +0.010 (95% CI -0.020..+0.040, block "
     "bootstrap): does not beat it; other baseline gradient boosting (LightGBM, last 8 bars) AUC 0.500"),
    (_metrics(0.56, 800, 0.5, None, None, _linear(0.53, 0.03, 0.005, 0.06), _gbm(0.52, 0.04, 0.01, 0.07)),
     f"evidence of skill beyond the best baseline (logistic regression): {_P56}; better baseline logistic "
     "regression (last bar) AUC 0.530, difference +0.030 (95% CI +0.005..+0.060, block bootstrap): beats it; other "
     f"baseline {_GBM16} AUC 0.520"),
    # a GBM that could not be fitted: the linear baseline decides, and the line says so
    (_metrics(0.56, 800, 0.5, None, None, _linear(0.52, 0.04, 0.01, 0.07),
              {"val_auc": None, "lags": 16, "auc_difference": None, "note": "not fitted"}),
     f"evidence of skill beyond a linear model on the last bar's features: {_P56}; baseline logistic regression "
     f"(last bar) AUC 0.520, difference +0.040 (95% CI +0.010..+0.070, block bootstrap): beats it; other baseline "
     f"{_GBM16} not fitted"),
])
def test_verdict_judges_against_the_better_baseline_and_names_it(metrics, expected):
    assert verdict(metrics) == expected


def test_a_card_from_before_the_gbm_baseline_is_judged_against_the_linear_one():
    lin = _linear(0.55, 0.01, -0.02, 0.04)
    old = verdict(_metrics(0.56, 800, 0.5, None, None, lin))
    assert old.startswith("ranks better than chance, but no better than a linear model on the last bar's features")
    assert "baseline logistic regression (last bar) AUC 0.550" in old and "gradient boosting" not in old
    # the same card with a weaker GBM beside it: the same judgement, the GBM's AUC added
    both = verdict(_metrics(0.56, 800, 0.5, None, None, lin, _gbm(0.51, 0.05, 0.01, 0.09)))
    assert both.split(":")[0] == old.split(":")[0] and f"other baseline {_GBM16} AUC 0.510" in both


def test_verdict_never_raises_on_crafted_baseline_fields():
    for lin in ("x", [], {"val_auc": "high"}, {"val_auc": 0.5, "auc_difference": {"value": "a"}},
                {"price_volume": {"other_columns": "bid", "val_auc": 0.1}}):
        assert verdict(_metrics(0.6, 800, 0.5, None, None, lin)).startswith("evidence of ranking skill")
        for gbm in ("x", {"lags": "16", "val_auc": True}, {"lags": True, "val_auc": 0.5, "auc_difference": []}):
            assert verdict(_metrics(0.6, 800, 0.5, None, None, lin, gbm)).startswith("evidence of ranking skill")


def test_the_verdict_repeats_the_baseline_module_margin():
    from agents.artifact import baseline

    assert verdict_module.LOOKAHEAD_MARGIN == baseline.LOOKAHEAD_MARGIN


def test_verdict_boundary_is_the_stated_level():
    # the AUC whose p-value is exactly ALPHA, for 400 + 400 events: just above it is skill, just below is not
    sd = math.sqrt(160000 * 801 / 12)
    auc_at_alpha = 0.5 + NormalDist().inv_cdf(1 - ALPHA) * sd / 160000
    assert verdict(_metrics(auc_at_alpha + 1e-4, 800, 0.5)).startswith("evidence of ranking skill")
    assert verdict(_metrics(auc_at_alpha - 1e-4, 800, 0.5)).startswith("no evidence of skill")


@pytest.mark.parametrize("metrics, expected", [
    ({}, "no verdict: no validation events (e.g. a refit on train + validation)"),
    ([], "no verdict: no validation events (e.g. a refit on train + validation)"),
    ({"label_balance": {"train_events": 3000, "train_positive_rate": 0.5}},
     "no verdict: no validation events (e.g. a refit on train + validation)"),
    (_metrics(0.6, 0, 0.5), "no verdict: no validation events (e.g. a refit on train + validation)"),
    (_metrics(None, 100, 0.5), "no verdict: validation AUC unavailable (None)"),
    (_metrics(0.6, 100, 0.0), "no verdict: all 100 validation events have the same label"),
    (_metrics(0.6, 100, "half"), "no verdict: validation event counts unusable (events 100, positive rate None)"),
    (_metrics(0.6, True, 0.5), "no verdict: validation event counts unusable (events True, positive rate 0.5)"),
])
def test_verdict_without_usable_validation_numbers(metrics, expected):
    assert verdict(metrics) == expected


def test_a_meta_labelled_agent_shows_its_primary_alone_and_trades_its_sides(tiny_agent, tmp_path):
    from agents.artifact.inspect import model_card

    def meta(card):
        card["train_config"]["primary"] = "momentum:lookback=20"
        card["metrics"]["primary"] = {"rule": "momentum:lookback=20", "val_bets": 120, "val_precision": 0.525}

    path = _tampered(tiny_agent[0], tmp_path / "meta.onnx", meta)
    line = next(ln for ln in model_card(OnnxAgent.load(path)).splitlines() if ln.startswith("primary"))
    assert line.startswith("primary     momentum:lookback=20 alone: precision 0.525 over 120 validation bets; "
                           "the agent at its threshold: ")
    # the main command trades the primary's sides (long and short), sized by the probability
    report = tmp_path / "meta.json"
    done = subprocess.run([sys.executable, "run_backtest.py", "--agent", str(path), "--no-plot", "--threshold", "0",
                           "--report", str(report)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "sized by probability (step 0)" in done.stdout
    sides = {r["side"]: r for r in json.loads(report.read_text())["sides"]}
    assert sides["long"]["trades"] > 0 and sides["short"]["trades"] > 0
    assert f"short: {sides['short']['trades']} trades, win rate" in done.stdout
    assert {t["side"] for t in json.loads(report.read_text())["trades"]} == {1, -1}
    # a card naming a rule that does not exist is one line
    bad = _tampered(tiny_agent[0], tmp_path / "bad.onnx",
                    lambda card: card["train_config"].__setitem__("primary", "momentum:lookbak=20"))
    done = subprocess.run([sys.executable, "run_backtest.py", "--agent", str(bad), "--no-plot"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == "" and done.stderr.count("\n") == 1
    assert "its card's primary rule 'momentum:lookbak=20'" in done.stderr


def test_an_agent_trained_both_ways_trades_long_and_short_on_its_own_probability(tiny_agent, tmp_path):
    path = _tampered(tiny_agent[0], tmp_path / "both.onnx",
                     lambda card: card["train_config"].__setitem__("primary", "both"))
    report = tmp_path / "both.json"
    done = subprocess.run([sys.executable, "run_backtest.py", "--agent", str(path), "--no-plot", "--sizing", "fixed",
                           "--report", str(report)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rep = json.loads(report.read_text())
    signal = [p for p in rep["bars"]["signal"] if p is not None]
    assert signal and min(signal) >= 0.5  # the larger of p and 1 - p: the bet's own probability
    assert {t["side"] for t in rep["trades"]} == {1, -1}

