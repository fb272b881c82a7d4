"""The linear classifier's closed-form training step against the same loop with autograd."""

import torch

from rrdist.eval.linear import LinearSettings, fit_linear, fit_linear_autograd


def test_closed_form_gradient_training_equals_autograd_training():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 16, generator=g, dtype=torch.float64).float()
    y = torch.randint(0, 5, (1000,), generator=g)
    settings = LinearSettings(epochs=3, lr=1e-2, batch_size=128, seed=4)  # 1000 = 7 * 128 + 104: a short last batch
    fast = fit_linear(x, y, 5, settings, torch.device("cpu"))
    plain = fit_linear_autograd(x, y, 5, settings, torch.device("cpu"))
    torch.manual_seed(4)
    start = torch.nn.Linear(16, 5)
    assert not torch.allclose(fast.weight, start.weight, atol=1e-3)  # it trained
    assert torch.allclose(fast.weight, plain.weight, atol=1e-5)
    assert torch.allclose(fast.bias, plain.bias, atol=1e-5)
