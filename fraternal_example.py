"""Fraternal dropout and R-Drop added to an ordinary PyTorch model: two forwards, two losses, one penalty.

Nothing of this repository's model or settings is needed: any model whose forward draws new dropout
masks in train mode works.  ``python fraternal_example.py`` trains a small dropout MLP on a toy task
with each loss and prints the losses and the test accuracy.
"""
import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F

from fraternal import mse_penalty, symmetric_kl_penalty


def fraternal_dropout_loss(model, x, y, kappa=0.1):
    """FD: the averaged target loss of two passes with independent masks, plus kappa times the mean
    squared difference of their outputs before softmax."""
    logits1, logits2 = model(x), model(x)  # two forwards: each draws its own dropout masks
    target = (F.cross_entropy(logits1, y) + F.cross_entropy(logits2, y)) / 2
    return target + kappa * mse_penalty(logits1, logits2)


def r_drop_loss(model, x, y, kappa=1.0):
    """R-Drop: the same two passes and averaged target, with the symmetric KL of their softmaxes."""
    logits1, logits2 = model(x), model(x)
    target = (F.cross_entropy(logits1, y) + F.cross_entropy(logits2, y)) / 2
    return target + kappa * symmetric_kl_penalty(logits1, logits2)


def toy_data(n, generator):
    """Points in the plane, labelled by which of 4 quadrants holds them."""
    x = torch.randn(n, 2, generator=generator)
    return x, (x[:, 0] > 0).long() * 2 + (x[:, 1] > 0).long()


def make_model():
    return nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Dropout(0.3), nn.Linear(64, 4))


def train(loss_fn, steps=200, seed=0):
    """A few Adam steps with ``loss_fn(model, x, y)``; returns the last loss and the test accuracy."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        x, y = toy_data(128, g)
        loss = loss_fn(model, x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    x, y = toy_data(1000, g)
    with torch.no_grad():
        accuracy = (model(x).argmax(-1) == y).float().mean().item()
    return loss.item(), accuracy


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=200, help="training steps per loss (default 200)")
    args = p.parse_args(argv)
    results = {}
    for name, loss_fn in (("fraternal dropout", fraternal_dropout_loss), ("R-Drop", r_drop_loss)):
        results[name] = train(loss_fn, args.steps)
        print(f"{name:18s} last loss {results[name][0]:.4f}, test accuracy {results[name][1]:.3f}")
    return results


if __name__ == "__main__":
    main()
