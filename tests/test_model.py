import json
import math

import numpy as np
import pytest
import torch

from agents.model.config import ModelConfig
from agents.model.transformer import TransformerAgent, sinusoidal_positions


def _tiny(**kw) -> ModelConfig:
    base = dict(n_features=5, seq_len=12, d_model=16, n_heads=2, n_layers=1, dim_feedforward=32)
    base.update(kw)
    return ModelConfig(**base)


@pytest.mark.parametrize("positional", ["learned", "sinusoidal"])
def test_output_shape_and_a_known_answer(positional):
    torch.manual_seed(0)
    model = TransformerAgent(_tiny(positional=positional)).eval()
    # the last bar's state goes through LayerNorm and the head: with the norm's gain 0 and bias 0.5, and a
    # head of ones with bias 0.25, every window's logit is 16 * 0.5 + 0.25 = 8.25, whatever the input
    with torch.no_grad():
        model.norm.weight.zero_()
        model.norm.bias.fill_(0.5)
        model.head.weight.fill_(1.0)
        model.head.bias.fill_(0.25)
    for batch in (1, 9):
        out = model(torch.randn(batch, 12, 5))
        assert out.shape == (batch,) and out.dtype == torch.float32
        assert out.tolist() == [8.25] * batch


def test_eval_is_deterministic_and_train_mode_uses_dropout():
    torch.manual_seed(0)
    model = TransformerAgent(_tiny(dropout=0.5))
    x = torch.randn(4, 12, 5)
    model.eval()
    with torch.no_grad():
        a, b = model(x), model(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    model.train()
    with torch.no_grad():
        c, d = model(x), model(x)
    assert not torch.equal(c, d)


def test_each_prediction_depends_only_on_its_own_window():
    torch.manual_seed(0)
    model = TransformerAgent(_tiny()).eval()
    x = torch.randn(6, 12, 5)
    with torch.no_grad():
        full = model(x)
        alone = torch.stack([model(x[i : i + 1])[0] for i in range(6)])
        x2 = x.clone()
        x2[3] = torch.randn(12, 5)  # change one window only
        changed = model(x2)
    torch.testing.assert_close(full, alone, rtol=1e-5, atol=1e-6)
    assert torch.equal(torch.cat([changed[:3], changed[4:]]), torch.cat([full[:3], full[4:]]))
    assert changed[3] != full[3]


def test_all_bars_of_the_window_influence_the_logit():
    torch.manual_seed(0)
    model = TransformerAgent(_tiny()).eval()
    x = torch.randn(1, 12, 5, requires_grad=True)
    model(x).sum().backward()
    per_bar = x.grad.abs().sum(dim=2)[0]  # (L,)
    assert (per_bar > 0).all()  # the first bar matters too, through attention


def test_parameter_count_matches_formula():
    c = ModelConfig(n_features=16, seq_len=64)  # defaults: d 64, 4 heads, 2 layers, ff 128
    model = TransformerAgent(c)
    d, ff = c.d_model, c.dim_feedforward
    per_layer = (3 * d * d + 3 * d) + (d * d + d) + (d * ff + ff) + (ff * d + d) + 2 * 2 * d
    expected = (16 * d + d) + 64 * d + c.n_layers * per_layer + 2 * d + (d + 1)
    assert model.num_parameters() == expected == 72_321
    sin = TransformerAgent(ModelConfig(n_features=16, seq_len=64, positional="sinusoidal"))
    assert sin.num_parameters() == expected - 64 * d  # the table is a fixed buffer
    assert "pos" not in sin.state_dict()


def test_sinusoidal_table_values():
    table = sinusoidal_positions(3, 4)
    assert table.shape == (3, 4)
    expected = [[math.sin(p), math.cos(p), math.sin(p / 100), math.cos(p / 100)] for p in range(3)]
    np.testing.assert_allclose(table.numpy(), expected, atol=1e-6)
    odd = sinusoidal_positions(2, 5)  # odd width: 3 sin channels, 2 cos channels
    f1, f2 = 10000 ** (-2 / 5), 10000 ** (-4 / 5)
    np.testing.assert_allclose(
        odd[1].numpy(), [math.sin(1), math.cos(1), math.sin(f1), math.cos(f1), math.sin(f2)], atol=1e-6
    )


def test_wrong_input_shape_names_expected_shape():
    model = TransformerAgent(_tiny())
    with pytest.raises(ValueError, match=r"\(B, 12, 5\)"):
        model(torch.randn(2, 11, 5))
    with pytest.raises(ValueError, match=r"\(B, 12, 5\)"):
        model(torch.randn(12, 5))


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"d_model": 10, "n_heads": 3}, "divisible"),
        ({"n_layers": 0}, "n_layers"),
        ({"seq_len": -1}, "seq_len"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"positional": "rope"}, "positional"),
        ({"n_features": 2.0}, "n_features"),
    ],
)
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        _tiny(**kw)


def test_config_json_round_trip():
    c = _tiny(positional="sinusoidal", dropout=0.0)
    assert ModelConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    with pytest.raises(ValueError, match="unknown keys"):
        ModelConfig.from_dict({**c.to_dict(), "n_head": 2})
    with pytest.raises(AttributeError):
        c.d_model = 8  # frozen


def test_onnx_export_dynamic_batch_matches_torch(tmp_path):
    import onnxruntime as ort
    torch.manual_seed(0)
    model = TransformerAgent(_tiny()).eval()
    path = tmp_path / "agent.onnx"
    torch.onnx.export(
        model,
        (torch.randn(3, 12, 5),),
        str(path),
        dynamo=True,
        input_names=["x"],
        output_names=["logits"],
        dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4096)}},
        verbose=False,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        x = torch.randn(batch, 12, 5)
        (got,) = session.run(None, {"x": x.numpy()})
        with torch.no_grad():
            want = model(x).numpy()
        assert got.shape == (batch,)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_both_exporters_give_torchs_logits_at_any_batch_size(exporter, tmp_path):
    import onnxruntime as ort

    from agents.artifact.export import export_agent

    torch.manual_seed(0)
    model = TransformerAgent(_tiny()).eval()
    example = torch.randn(8, model.config.seq_len, model.config.n_features).numpy()
    card = {"input_name": "x", "output_name": "logit", "package_version": "test"}
    export_agent(model, card, tmp_path / "m.onnx", example, exporter=exporter)
    assert card["exporter"] == exporter
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 3, 257):
        x = torch.randn(batch, model.config.seq_len, model.config.n_features)
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {"x": x.numpy()})[0]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_auto_exporter_follows_the_memory_left():
    from agents.artifact.export import EXPORTER_MEMORY, choose_exporter

    assert choose_exporter("auto", available=4 * 2**30) == "dynamo"
    assert choose_exporter("auto", available=EXPORTER_MEMORY["dynamo"]) == "torchscript"  # no 20% to spare
    assert choose_exporter("torchscript", available=4 * 2**30) == "torchscript"
    with pytest.raises(ValueError, match="exporter must be"):
        choose_exporter("onnxscript")


class _Fixed(torch.nn.Module):
    """An encoder stand-in whose output is known: every step's state is the input's first feature in every channel."""

    def __init__(self, x, d_model):
        super().__init__()
        self.out = x[:, :, :1].expand(-1, -1, d_model)

    def forward(self, h):
        return self.out


def _constant_encoder(model, x):
    model.encoder = _Fixed(x, model.config.d_model)


def test_mean_and_attention_pooling_by_hand():
    """With the encoder replaced by a known map, mean pooling is the mean over steps; attention pooling
    with its query at zero (as initialised) gives every step the same weight, so it equals the mean."""
    x = torch.arange(2 * 12 * 5, dtype=torch.float32).reshape(2, 12, 5) / 100
    for pooling in ("mean", "attention"):
        model = TransformerAgent(_tiny(pooling=pooling, dropout=0.0)).eval()
        _constant_encoder(model, x)
        with torch.no_grad():
            model.norm = torch.nn.Identity()
            model.head.weight.fill_(1.0)
            model.head.bias.zero_()
            got = model(x)
        want = x[:, :, 0].mean(dim=1) * 16  # 16 channels, each the mean of the first feature
        torch.testing.assert_close(got, want)


def test_attention_pooling_follows_its_query():
    """A query that scores the last step far above the others turns attention pooling into last-step pooling."""
    torch.manual_seed(0)
    att = TransformerAgent(_tiny(pooling="attention", dropout=0.0)).eval()
    last = TransformerAgent(_tiny(pooling="last", dropout=0.0)).eval()
    last.load_state_dict({k: v for k, v in att.state_dict().items() if k != "query"})
    x = torch.randn(3, 12, 5)
    x[:, -1, 0] = 50.0  # the last step stands out in the first feature
    with torch.no_grad():
        h = att.encoder(att.drop(att.input_proj(x) + att.pos))
        direction = h[:, -1] - h[:, :-1].mean(dim=1)
        att.query.copy_(direction.mean(dim=0) * 1e3)
        torch.testing.assert_close(att(x), last(x), rtol=1e-4, atol=1e-4)


def test_lags_pooling_reads_the_last_lags_steps_only_each_with_its_own_weights():
    torch.manual_seed(0)
    model = TransformerAgent(_tiny(pooling="lags", lags=4, lag_width=3, dropout=0.0)).eval()
    assert model.lag_proj.out_features == 3 and model.head[0].in_features == 4 * 3
    x = torch.randn(2, 12, 5)
    with torch.no_grad():
        base = model(x)
        # with the encoder replaced by a known map (and no norm, which would flatten its equal channels),
        # bars older than the last 4 change nothing and one of the last 4 does
        model.norm = torch.nn.Identity()
        _constant_encoder(model, x)
        a = model(x)
        y = x.clone()
        y[:, :8] = torch.randn(2, 8, 5)
        _constant_encoder(model, y)
        b = model(y)
        z = x.clone()
        z[:, 9, 0] += 1.0  # one of the last 4 bars
        _constant_encoder(model, z)
        c = model(z)
    assert base.shape == (2,)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)
    with pytest.raises(ValueError, match="pooling"):
        _tiny(pooling="max")


@pytest.mark.parametrize("pooling", ["mean", "attention", "lags"])
def test_every_pooling_exports_to_onnx_with_torchs_logits(pooling, tmp_path):
    import onnxruntime as ort

    from agents.artifact.export import export_agent

    torch.manual_seed(0)
    model = TransformerAgent(_tiny(pooling=pooling, lags=8)).eval()
    example = torch.randn(8, model.config.seq_len, model.config.n_features).numpy()
    card = {"input_name": "x", "output_name": "logit", "package_version": "test"}
    export_agent(model, card, tmp_path / "m.onnx", example, exporter="torchscript")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        x = torch.randn(batch, model.config.seq_len, model.config.n_features)
        with torch.no_grad():
            expected = model(x).numpy()
        np.testing.assert_allclose(session.run(None, {"x": x.numpy()})[0], expected, rtol=0, atol=1e-5)
