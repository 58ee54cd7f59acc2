"""agents.model.optim.AdamW: bit-identical to torch.optim.AdamW(foreach=False), without importing torch._dynamo."""

import copy
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from agents.model.config import ModelConfig
from agents.model.transformer import TransformerAgent
from agents.model.optim import AdamW

ROOT = Path(__file__).resolve().parents[1]
# dropout=0 so the two twin models see the same forward pass without sharing an RNG stream.
CONFIG = ModelConfig(n_features=4, seq_len=8, d_model=16, n_heads=2, n_layers=1, dropout=0.0)


class _Net(nn.Module):
    """A tiny agent plus two extra parameters: one never in the loss, one in it on even steps only."""

    def __init__(self):
        super().__init__()
        self.agent = TransformerAgent(CONFIG)
        self.unused = nn.Parameter(torch.randn(3))
        self.sometimes = nn.Parameter(torch.randn(5))

    def loss(self, step):
        g = torch.Generator().manual_seed(1000 + step)
        x = torch.randn(6, CONFIG.seq_len, CONFIG.n_features, generator=g)
        y = (torch.rand(6, generator=g) > 0.5).float()
        loss = nn.functional.binary_cross_entropy_with_logits(self.agent(x), y)
        return loss + (self.sometimes**2).sum() if step % 2 == 0 else loss

    def params(self):
        """The agent's parameters, then ``unused``, then ``sometimes``: the order the tests index by."""
        return [*self.agent.parameters(), self.unused, self.sometimes]


def _twins(seed=0):
    torch.manual_seed(seed)
    net = _Net()
    return net, copy.deepcopy(net)


def _train(net, opt, steps, first=0):
    for k in range(first, first + steps):
        opt.zero_grad()
        net.loss(k).backward()
        opt.step()


def _assert_same(a, b):
    for i, (pa, pb) in enumerate(zip(a.params(), b.params())):
        assert torch.equal(pa, pb), i


HYPER = [
    dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2),  # torch's AdamW defaults
    dict(lr=3e-3, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.0),
    dict(lr=2e-2, betas=(0.5, 0.9), eps=1e-5, weight_decay=0.1),
]


@pytest.mark.parametrize("hyper", HYPER)
def test_bit_identical_to_torch_every_step(hyper):
    ours_net, torch_net = _twins()
    start = copy.deepcopy(ours_net)
    ours = AdamW(ours_net.params(), **hyper)
    ref = torch.optim.AdamW(torch_net.params(), **hyper, foreach=False)
    for k in range(25):
        _train(ours_net, ours, 1, first=k)
        _train(torch_net, ref, 1, first=k)
        _assert_same(ours_net, torch_net)
    # Not trivially equal: the agent trained, the unused parameter never moved, and the part-time one
    # counted only its 13 steps with a gradient (torch keeps a step count per parameter).
    assert not torch.equal(ours_net.agent.head.weight, start.agent.head.weight)
    assert torch.equal(ours_net.unused, start.unused) and ours.steps[-2] == 0
    assert ours.steps[-1] == 13 and ref.state[torch_net.sometimes]["step"].item() == 13.0
    assert torch_net.unused not in ref.state
    for i, p in enumerate(torch_net.params()):
        if p in ref.state:
            assert torch.equal(ours.exp_avg[i], ref.state[p]["exp_avg"])
            assert torch.equal(ours.exp_avg_sq[i], ref.state[p]["exp_avg_sq"])


_PROBE = """
import json, sys, torch
from agents.model.config import ModelConfig
from agents.model.transformer import TransformerAgent
torch.manual_seed(0)
model = TransformerAgent(ModelConfig(n_features=4, seq_len=8, d_model=16, n_heads=2, n_layers=1))
if sys.argv[1] == "ours":
    from agents.model.optim import AdamW
    opt = AdamW(model.parameters())
else:
    opt = torch.optim.AdamW(model.parameters(), foreach=False)
for _ in range(3):
    opt.zero_grad()
    model(torch.randn(4, 8, 4)).sum().backward()
    opt.step()
sd = opt.state_dict()
print(json.dumps({m: m in sys.modules for m in ("torch._dynamo", "sympy")}))
"""


def _modules_after_three_steps(which):
    done = subprocess.run([sys.executable, "-c", _PROBE, which], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_does_not_import_dynamo_unlike_torch_optim():
    assert _modules_after_three_steps("ours") == {"torch._dynamo": False, "sympy": False}
    # Control: torch's own AdamW does pull them in, so the probe above can tell the difference.
    assert _modules_after_three_steps("torch") == {"torch._dynamo": True, "sympy": True}


def test_state_dict_round_trip_through_weights_only_load():
    net, _ = _twins(seed=3)
    opt = AdamW(net.params(), lr=5e-3, betas=(0.85, 0.99), eps=1e-7, weight_decay=0.05)
    _train(net, opt, 5)
    state = opt.state_dict()
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)

    twin = copy.deepcopy(net)
    fresh = AdamW(twin.params())  # default hyperparameters: the state must bring the real ones
    fresh.load_state_dict(loaded)
    assert (fresh.lr, fresh.betas, fresh.eps, fresh.weight_decay) == (5e-3, (0.85, 0.99), 1e-7, 0.05)
    assert fresh.steps == [5] * (len(fresh.steps) - 2) + [0, 3]
    _train(net, opt, 5, first=5)
    _train(twin, fresh, 5, first=5)
    _assert_same(net, twin)
    # The saved state was a copy: training on did not change it.
    assert state["step"][0] == 5 and not torch.equal(state["exp_avg"][0], opt.exp_avg[0])


def test_load_state_dict_rejects_a_mismatched_state():
    net, _ = _twins()
    opt = AdamW(net.params())
    _train(net, opt, 2)
    good = opt.state_dict()
    short = dict(good, exp_avg=good["exp_avg"][:-1])
    with pytest.raises(ValueError, match="'exp_avg' has"):
        opt.load_state_dict(short)
    reshaped = dict(good, exp_avg_sq=[t.reshape(-1) if t.dim() > 1 else t for t in good["exp_avg_sq"]])
    with pytest.raises(ValueError, match=r"exp_avg_sq\[\d+\] is"):
        opt.load_state_dict(reshaped)
    with pytest.raises(ValueError, match="must have keys"):
        opt.load_state_dict({k: v for k, v in good.items() if k != "eps"})
    assert opt.steps == good["step"]  # a refused state changed nothing


def test_zero_grad():
    p = nn.Parameter(torch.ones(3))
    opt = AdamW([p])
    (p * 2).sum().backward()
    opt.zero_grad(set_to_none=False)
    assert torch.equal(p.grad, torch.zeros(3))
    opt.zero_grad()
    assert p.grad is None


@pytest.mark.parametrize("kwargs, message", [
    (dict(lr=-1e-3), "learning rate"),
    (dict(betas=(1.0, 0.999)), "betas"),
    (dict(betas=(0.9, -0.1)), "betas"),
    (dict(eps=0.0), "epsilon"),
    (dict(eps=-1e-8), "epsilon"),
    (dict(weight_decay=-0.1), "weight_decay"),
])
def test_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdamW([nn.Parameter(torch.ones(2))], **kwargs)


def test_rejects_empty_or_non_leaf_params():
    with pytest.raises(ValueError, match="empty"):
        AdamW([])
    with pytest.raises(ValueError, match="non-leaf"):
        AdamW([nn.Parameter(torch.ones(2)) * 2])
