"""fraternal.py lifted alone into another project, and fraternal_example.py: FD and R-Drop on ordinary
models give exactly the papers' formulas, train, and are compared with a one-pass baseline."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import fraternal
import fraternal_example as example
from fraternal import Regularizer, fraternal_loss_pair
from runfiles import UserError

ROOT = Path(__file__).resolve().parents[1]


def two_passes(model, x, seed):
    torch.manual_seed(seed)
    return model(x), model(x)


def test_pair_loss_equals_the_formulas_on_an_ordinary_model():
    torch.manual_seed(0)
    model = example.make_model().train()
    x, y = example.toy_data(32, torch.Generator().manual_seed(1))
    kappa = 0.3
    l1, l2 = two_passes(model, x, 5)
    assert not torch.equal(l1, l2)  # two masks, two outputs: the penalty is not trivially 0
    target = (F.cross_entropy(l1, y) + F.cross_entropy(l2, y)) / 2
    fd = fraternal_loss_pair(*two_passes(model, x, 5), y, Regularizer.of("FD", kappa=kappa))
    assert torch.allclose(fd.loss, target + kappa * ((l1 - l2) ** 2).mean(), rtol=1e-6)
    assert torch.equal(fd.ce, F.cross_entropy(l1, y)) and torch.allclose(fd.penalty, kappa * ((l1 - l2) ** 2).mean())
    rd = fraternal_loss_pair(*two_passes(model, x, 5), y, Regularizer.of("RD", kappa=kappa))
    p1, p2 = F.softmax(l1, -1), F.softmax(l2, -1)
    kl = ((p1 * (p1 / p2).log()).sum(-1) + (p2 * (p2 / p1).log()).sum(-1)).mean() / 2
    assert torch.allclose(rd.loss, target + kappa * kl, rtol=1e-5)
    baseline = fraternal_loss_pair(l1, None, y, Regularizer.of("baseline"))
    assert torch.equal(baseline.loss, F.cross_entropy(l1, y)) and baseline.penalty == 0
    fd.loss.backward()  # the loss trains the model: gradients reach every weight
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


LIFTED = '''
import sys
import torch
import torch.nn as nn
sys.path.insert(0, sys.argv[1])
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 4))
x, y = torch.randn(8, 3), torch.randint(0, 4, (8,))
exec(ORDINARY)
loss.backward()
rnn, head = nn.GRU(3, 16, num_layers=2, dropout=0.5), nn.Sequential(nn.Dropout(0.5), nn.Linear(16, 4))
x, y, h = torch.randn(5, 2, 3), torch.randint(0, 4, (5, 2)), torch.zeros(2, 2, 16)
exec(STATEFUL)
loss.backward()
assert not h.requires_grad and h.shape == (2, 2, 16)
import fraternal
assert fraternal.__file__.startswith(sys.argv[1])
local = {m for m in sys.modules if m in ("fused_loss", "model", "masks", "runfiles", "config")}
assert not local, local
print("lifted", float(loss))
'''


def test_fraternal_py_copied_alone_into_another_project_runs_its_docstring_examples(tmp_path):
    """The docstring's two uses (an ordinary model, a stateful RNN) run in a process that sees only a
    copy of fraternal.py, not this repository."""
    shutil.copy(ROOT / "fraternal.py", tmp_path)
    blocks = re.findall(r"((?:\n {4}\S.*)+)\n", fraternal.__doc__)
    assert len(blocks) == 2
    ordinary, stateful = ("\n".join(line[4:] for line in b.strip("\n").split("\n")) for b in blocks)
    script = f"ORDINARY = {ordinary!r}\nSTATEFUL = {stateful!r}\n" + LIFTED
    done = subprocess.run([sys.executable, "-I", "-c", script, str(tmp_path)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("lifted")


def test_example_runs_learns_and_compares_with_the_baseline(capsys):
    results = example.main(["--steps", "60"])
    out = capsys.readouterr().out
    assert list(results) == ["baseline", "FD", "RD"]
    assert all(name in out for name in results)
    for ce, accuracy in results.values():
        assert accuracy > 0.8  # 4 quadrants, chance is 0.25


@pytest.mark.parametrize("steps", ["0", "-3"])
def test_example_refuses_no_steps_in_one_line(steps):
    with pytest.raises(UserError, match="--steps must be at least 1"):
        example.main(["--steps", steps])
    if steps == "0":
        done = subprocess.run([sys.executable, "fraternal_example.py", "--steps", steps], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and done.stderr.strip().splitlines() == ["error: --steps must be at least 1, got 0"]
