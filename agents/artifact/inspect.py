"""Print an agent's model card: ``python -m agents.inspect models/agent1.onnx [--json]``.

The runtime (onnx, onnxruntime, pandas) is imported in ``main`` after the arguments are parsed,
so ``--help`` and usage errors answer at once.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

from datafeeds.cli import ArgumentParser, UsageError, run_command

from .metadata import AgentFileError, loss_label
from .verdict import CAVEAT, verdict

if TYPE_CHECKING:
    from .runtime import OnnxAgent


def _num(x, spec=".4f") -> str:
    """A card number formatted, or "n/a" for anything else (a hand-edited card may hold any value)."""
    ok = isinstance(x, (int, float)) and not isinstance(x, bool)
    return format(x, spec) if ok else "n/a"


def _loss_name(config) -> str:
    """The training loss, from the card's config (what the losses and their baselines are measured in)."""
    c = config if isinstance(config, dict) else {}
    alpha, gamma = c.get("focal_alpha"), c.get("focal_gamma")
    ok = (alpha is None or isinstance(alpha, (int, float))) and isinstance(gamma, (int, float))
    return escape_controls(loss_label(alpha, gamma)) if ok else "n/a"


def _features(agent: OnnxAgent) -> str:
    """Each feature with the data columns it reads, e.g. ``obi (bid_size, ask_size)``."""
    sources = agent.meta.get("feature_sources")
    sources = sources if isinstance(sources, dict) else {}
    return ", ".join(f"{name} ({', '.join(map(str, sources[name]))})" if isinstance(sources.get(name), list)
                     else name for name in agent.feature_names)


def _difference(section: dict) -> str:
    """The agent-minus-baseline AUC difference with its interval, or "" where the card has none."""
    d = section.get("auc_difference")
    if not isinstance(d, dict) or d.get("value") is None:
        return ""
    return (f"; agent minus it {_num(d.get('value'), '+.3f')} ({_num(d.get('level', 0.95), '.0%')} CI "
            f"{_num(d.get('low'), '+.3f')}..{_num(d.get('high'), '+.3f')})")


def _baseline_line(metrics: dict, key: str, kind: str, default_model: str, detail) -> str:
    """One baseline section's validation numbers, or why there are none; ``detail(section)`` adds what is
    particular to it inside the model's parentheses."""
    sec = metrics.get(key)
    if not isinstance(sec, dict):
        return f"not recorded (a card from before the {kind} baseline)"
    model = sec.get("model", default_model)
    if sec.get("val_auc") is None and sec.get("val_logloss") is None:
        return f"{model}: {sec.get('note', 'not fitted')}"
    return (f"validation AUC {_num(sec.get('val_auc'), '.3f')}, log-loss {_num(sec.get('val_logloss'), '.4f')}"
            f" ({model}{detail(sec)}){_difference(sec)}")


def linear_line(metrics: dict) -> str:
    """The linear baseline's validation numbers, or why there are none (also used by agents.training.cli)."""
    text = _baseline_line(metrics, "linear_baseline", "linear", "logistic regression", lambda sec: "")
    lin = metrics.get("linear_baseline")
    pv = lin.get("price_volume") if isinstance(lin, dict) else None
    if isinstance(pv, dict) and pv.get("other_columns") and text.startswith("validation AUC"):
        text += f"; on price and volume alone (without {', '.join(map(str, pv['other_columns']))}): AUC " \
                f"{_num(pv.get('val_auc'), '.3f')}"
    return text


def gbm_line(metrics: dict) -> str:
    """The gradient-boosting baseline's validation numbers, or why there are none (also used by agents.training.cli)."""
    return _baseline_line(metrics, "gbm_baseline", "gradient-boosting", "gradient boosting", lambda sec: (
        f"; trees kept {_num(sec.get('n_estimators'), '.0f')}, training rows {_num(sec.get('train_rows'), '.0f')}"))


def weights_line(metrics: dict) -> str:
    """The sample weights' scheme and the training labels' uniqueness (also used by agents.training.cli)."""
    w = metrics.get("sample_weights")
    if not isinstance(w, dict) or not isinstance(w.get("uniqueness"), dict):
        return "not recorded (every label weighed 1)"
    u = w["uniqueness"]
    eff, n = w.get("effective_train_events"), w.get("train_events")
    worth = f"; {n} training labels worth ~{eff:.0f} independent ones" if isinstance(eff, (int, float)) and \
        isinstance(n, int) else ""
    return (f"{w.get('scheme')}: label uniqueness mean {_num(u.get('mean'), '.3f')} (min {_num(u.get('min'), '.3f')}, "
            f"max {_num(u.get('max'), '.3f')}){worth}")


def _spacing(seconds) -> str:
    """The training bars' spacing, as run_backtest compares it; cards made before it was recorded lack it."""
    from datafeeds.frequency import describe_spacing

    return "bar spacing not recorded" if seconds is None else f"a bar every {describe_spacing(seconds)}"


def universe_table(ds: dict) -> str:
    """Per instrument: bars, dates, and the label balance of each split (pooled metrics follow)."""
    cuts = ds.get("cuts", {})
    lines = [f"universe    {len(ds['universe'])} instruments, "
             f"cut dates: validation {str(cuts.get('validation'))[:10]}, "
             f"holdout {str(cuts.get('holdout'))[:10]}; normalisation {ds.get('normalise')}",
             f"            {'symbol':<14}{'bars':>7}  {'first .. last':<24}{'train events':>13} {'pos':>6}"
             f"{'val events':>12} {'pos':>6}"]
    for sym in ds.get("symbols") or ds["universe"]:
        e = ds["universe"][sym]
        rate = {w: "n/a" if e[f"{w}_positive_rate"] is None else f"{e[f'{w}_positive_rate']:.3f}"
                for w in ("train", "val")}
        lines.append(f"            {sym:<14}{e['bars']:>7}  {e['first'][:10]} .. {e['last'][:10]}  "
                     f"{e['train_events']:>12} {rate['train']:>6}{e['val_events']:>12} {rate['val']:>6}")
    return "\n".join(lines)


def primary_line(primary: dict, at_threshold: dict) -> str:
    """A meta-labelled agent's second baseline: its primary rule taking every bet, beside the agent's precision."""
    sharpe = ("" if "val_sharpe_per_bet" not in primary else
              f", Sharpe per bet {_num(primary.get('val_sharpe_per_bet'), '.3f')} (mean"
              f" {_num(primary.get('val_mean_return'), '+.3%')}, gross)")
    return (f"primary     {primary.get('rule')} alone: precision {_num(primary.get('val_precision'), '.3f')} over"
            f" {primary.get('val_bets')} validation bets{sharpe}; the agent at its threshold:"
            f" {_num(at_threshold.get('precision'), '.3f')}")


def model_card(agent: OnnxAgent) -> str:
    """A human-readable summary of what the agent is, what it saw, and how well it did."""
    m, ds, meta = agent.meta["metrics"], agent.meta["dataset"], agent.meta
    lb, pr, mc = m.get("label_balance", {}), m.get("val_at_threshold", {}), meta["model"]
    judged = verdict(m)
    lines = [
        f"agent       {agent.path}  (tbm-backtest {meta['package_version']}, format {meta['format_version']})",
        f"model       TransformerAgent d_model={mc.get('d_model')} heads={mc.get('n_heads')}"
        f" layers={mc.get('n_layers')}"
        f"  seq_len={agent.seq_len}  warm-up {agent.warmup} bars",
        f"features    {_features(agent)}",
        f"labels      TBM pt={agent.tbm.pt} sl={agent.tbm.sl} horizon={agent.tbm.horizon}"
        f" atr_period={agent.tbm.atr_period}",
        f"data        {ds['name']}  sha256 {ds['sha256'][:16]}...  {_spacing(ds.get('bar_seconds'))}",
        f"            train {ds['train'][0]} .. {ds['train'][1]}",
        f"            validation {ds['validation'][0]} .. {ds['validation'][1]}" if ds.get("validation")
        else "            validation: none (refit on train + validation)",
        f"            last bar seen {ds['last_bar_used']}; out-of-sample from {ds.get('holdout_start')}",
        *(universe_table(ds).splitlines() if ds.get("universe") else []),
        f"balance     train positive rate {_num(lb.get('train_positive_rate'), '.3f')}"
        f" ({lb.get('train_events')} events),"
        f" validation {_num(lb.get('val_positive_rate'), '.3f')} ({lb.get('val_events')})",
        f"loss        {_loss_name(agent.meta.get('train_config'))}",
        f"            train {_num(m.get('train_loss'))} vs no-skill baseline {_num(m.get('baseline_train_loss'))}"
        f" (base rate), {_num(m.get('best_constant_train_loss'))}"
        f" (best constant p={_num(m.get('best_constant_p'), '.3f')})",
        f"            validation {_num(m.get('val_loss'))} vs no-skill baseline {_num(m.get('baseline_val_loss'))}"
        f" (base rate), {_num(m.get('best_constant_val_loss'))} (best constant)",
        f"log-loss    validation {_num(m.get('val_logloss'))} vs {_num(m.get('baseline_val_logloss'))} (base rate)",
        f"AUC         validation {_num(m.get('val_auc'), '.3f')}; adversarial (train vs validation features)"
        f" {_num(m.get('adversarial_auc'), '.3f')}, 0.5 = no drift",
        f"linear      {linear_line(m)}",
        f"gbm         {gbm_line(m)}",
        f"threshold   {agent.threshold:.4f} ({m.get('threshold_rule', 'given')}); at it on validation: precision"
        f" {_num(pr.get('precision'), '.3f')}, recall {_num(pr.get('recall'), '.3f')},"
        f" signal rate {_num(pr.get('signal_rate'), '.3f')}",
        *([primary_line(m["primary"], pr)] if isinstance(m.get("primary"), dict) else []),
        f"verdict     {judged}",
        *([] if judged.startswith("no verdict") else [f"            ({CAVEAT})"]),
        f"weights     {weights_line(m)}",
        f"training    {m.get('epochs_run')} epochs, best {m.get('best_epoch')}",
        f"command     {meta['training_command']}",
    ]
    wf = meta.get("walk_forward")
    if wf:
        lines.append(f"walk-fwd    study {wf.get('study')} fold {wf.get('fold')},"
                     f" test {wf.get('test', ['?', '?'])[0]} .."
                     f" {wf.get('test', ['?', '?'])[1]}, best trial {wf.get('best_trial')}: {wf.get('params')}")
    # card strings are data from a file anyone can edit: terminal escape sequences or line breaks in them
    # are shown escaped, never interpreted
    return "\n".join(escape_controls(line) for line in lines)


def escape_controls(text: str) -> str:
    """``text`` with every non-printable character (ESC, newline, ...) written as its Python escape."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m agents.inspect", description="Print the model card of an exported agent.")
    p.add_argument("model", help="path to an .onnx agent, e.g. models/agent1.onnx")
    p.add_argument("--json", action="store_true", help="print the full metadata as JSON instead")
    return p


def main(argv: list[str] | None = None) -> int:
    """The command: parse, load the agent, print its card; the exit status (2: not a valid agent file)."""
    return run_command(_main, argv)


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from .runtime import OnnxAgent  # here, not at the top: onnx/onnxruntime/pandas take a second to import

    try:
        agent = OnnxAgent.load(args.model)
    except AgentFileError as exc:
        raise UsageError(str(exc)) from None
    print(json.dumps(agent.meta, indent=2) if args.json else model_card(agent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
