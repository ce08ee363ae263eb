"""fraternal_example.py: FD and R-Drop on an ordinary PyTorch model give exactly the paper's formulas."""
import torch
import torch.nn.functional as F

import fraternal_example as example


def two_passes(model, x, seed):
    torch.manual_seed(seed)
    return model(x), model(x)


def test_example_losses_equal_the_formulas():
    torch.manual_seed(0)
    model = example.make_model().train()
    x, y = example.toy_data(32, torch.Generator().manual_seed(1))
    kappa = 0.3
    torch.manual_seed(5)
    fd = example.fraternal_dropout_loss(model, x, y, kappa)
    l1, l2 = two_passes(model, x, 5)  # the same two masks again
    assert not torch.equal(l1, l2)  # two masks, two outputs: the penalty is not trivially 0
    target = (F.cross_entropy(l1, y) + F.cross_entropy(l2, y)) / 2
    assert torch.allclose(fd, target + kappa * ((l1 - l2) ** 2).mean(), rtol=1e-6)
    torch.manual_seed(5)
    rd = example.r_drop_loss(model, x, y, kappa)
    p1, p2 = F.softmax(l1, -1), F.softmax(l2, -1)
    kl = ((p1 * (p1 / p2).log()).sum(-1) + (p2 * (p2 / p1).log()).sum(-1)).mean() / 2
    assert torch.allclose(rd, target + kappa * kl, rtol=1e-5)
    fd.backward()  # the loss trains the model: gradients reach every weight
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_example_runs_and_learns(capsys):
    results = example.main(["--steps", "60"])
    out = capsys.readouterr().out
    assert "fraternal dropout" in out and "R-Drop" in out
    for loss, accuracy in results.values():
        assert accuracy > 0.8  # 4 quadrants, chance is 0.25
