"""nn.Module helper: parameters as dicts and functional_call, checked against a flat re-implementation."""
import pytest
import torch
from torch import nn

import bilevel
from bilevel import models


def test_module_hypergrad_equals_flat_parameterisation():
    torch.manual_seed(0)
    X, t = torch.randn(40, 5, dtype=torch.float64), torch.randn(40, 1, dtype=torch.float64)
    Xv, tv = torch.randn(20, 5, dtype=torch.float64), torch.randn(20, 1, dtype=torch.float64)
    net = nn.Linear(5, 1).double()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    call = models.functional(net)
    y0 = models.parameters(net)
    assert set(y0) == {"weight", "bias"}

    def lower(x, y):
        return ((call(y, X) - t) ** 2).mean() + torch.exp(x) * (y["weight"] ** 2).sum()

    def upper(x, y):
        return ((call(y, Xv) - tv) ** 2).mean()

    res = bilevel.hypergrad(upper, lower, torch.tensor(-1.0, dtype=torch.float64), y0, method="rhg",
                            inner_steps=25, inner_lr=0.1)

    def lower_flat(x, v):
        return ((X @ v[:5] + v[5] - t[:, 0]) ** 2).mean() + torch.exp(x) * (v[:5] ** 2).sum()

    def upper_flat(x, v):
        return ((Xv @ v[:5] + v[5] - tv[:, 0]) ** 2).mean()

    v0 = torch.cat([y0["weight"].reshape(-1), y0["bias"]])
    ref = bilevel.hypergrad(upper_flat, lower_flat, torch.tensor(-1.0, dtype=torch.float64), v0, method="rhg",
                            inner_steps=25, inner_lr=0.1)
    assert torch.allclose(res.grad, ref.grad, rtol=1e-12)
    assert all(torch.equal(before[k], net.state_dict()[k]) for k in before)  # the module is untouched
    models.load(net, res.y)
    assert torch.equal(net.weight.detach(), res.y["weight"])


def test_bad_module_arguments():
    with pytest.raises(ValueError, match="nn.Module"):
        models.parameters("not a module")
    with pytest.raises(ValueError, match="no parameters named"):
        models.load(nn.Linear(2, 1), {"w": torch.zeros(1)})
