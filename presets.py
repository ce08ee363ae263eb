"""The experiment setups, each declared once with its source: a preset fills every setting not given."""
from dataclasses import dataclass, field

from fraternal import VARIANTS

CORPORA = {"ptb": "data/penn", "wt2": "data/wikitext-2"}


@dataclass(frozen=True)
class Preset:
    """One experiment setup: its settings, its fine-tuning row (batch_size, epochs, seed), its cache-pointer
    settings' key (pointer.py) and, per variant, a kappa other than fraternal.VARIANTS' where its source used one."""
    corpus: str  # ptb or wt2
    values: dict
    finetune: dict
    pointer: str
    source: str
    kappa: dict = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "values", dict(self.values, data=CORPORA[self.corpus]))


_SINGLE = dict(emsize=655, nhid=655, nlayers=1, lr=30.0, clip=0.25, epochs=1000, batch_size=64, bptt=35, dropout=0.4,
               dropouth=0.0, dropouti=0.65, dropoute=0.1, wdrop=0.5, seed=321, nonmono=5, alpha=0.0, beta=0.0,
               wdecay=1.2e-6, optimizer="sgd-anneal", locked=False, tied=True, max_seq_len=45, reset_hidden_prob=0.01,
               patience=20, anneal=3.0, min_lr=0.1)
_FD = dict(_SINGLE, emsize=400, nhid=1150, nlayers=3, epochs=750, batch_size=20, bptt=70, dropouth=0.3, dropouti=0.4,
           nonmono=60, optimizer="asgd-nt", locked=True, max_seq_len=0, reset_hidden_prob=0.0)
# AWD-LSTM's own recipe (not FD's with kappa 0): NT-ASGD with n = 5, AR 2, TAR 1.
_AWD = dict(_FD, nonmono=5, alpha=2.0, beta=1.0)
_MERITY_PTB = dict(_AWD, batch_size=40, seed=141, epochs=500)
_MERITY_WT2 = dict(_AWD, batch_size=80, dropouti=0.65, seed=1882)
FD_PAPER = "Zolna et al. 2018 (fraternal dropout)"
# Seeds: neither the paper nor the README at bf0742c names one, so merity-* and merity-readme-* take the README
# commands' (141 PTB, 1882 WT2); merity-tag-* take those its tag's README names (28 PTB; 20923 WT2, 1111 fine-tuning).
TAG = "awd-lstm-lm at tag PyTorch==0.1.12, its README's exact-reproduction commands"
PRESET = {
    "single": Preset("ptb", _SINGLE, dict(batch_size=64, epochs=500, seed=141), "readme",
                     f"{FD_PAPER}, single-layer PTB ablation setup (fine-tuning row: ours)", {"FD": 0.15}),
    "awd-ptb": Preset("ptb", _FD, dict(batch_size=20, epochs=500, seed=141), "readme", f"{FD_PAPER}, 3-layer PTB"),
    # trains at batch 40 and fine-tunes at 80, as the WT2 README command fine-tuned
    "awd-wt2": Preset("wt2", dict(_FD, batch_size=40, dropouth=0.2, dropouti=0.65),
                      dict(batch_size=80, epochs=750, seed=1882), "readme", f"{FD_PAPER}, 3-layer WikiText-2"),
    # The paper's text (arXiv 1708.02182, "Experiment details"), except PTB's 500 epochs: the authors' later note
    # (awd-lstm-lm README at 19470c8) on how the paper's PTB model was trained.  Each fine-tunes at its training batch.
    "merity-ptb": Preset("ptb", _MERITY_PTB, dict(batch_size=40, epochs=500, seed=141), "paper",
                         "Merity et al. 2017 (arXiv 1708.02182), Experiment details; 500 epochs: README at 19470c8"),
    "merity-wt2": Preset("wt2", _MERITY_WT2, dict(batch_size=80, epochs=750, seed=1882), "paper",
                         "Merity et al. 2017 (arXiv 1708.02182), Experiment details"),
    # awd-lstm-lm's README commands at the paper's commit bf0742c, with their own numbers.
    "merity-readme-ptb": Preset("ptb", dict(_MERITY_PTB, batch_size=20, dropouth=0.25),
                                dict(batch_size=20, epochs=500, seed=141), "readme", "awd-lstm-lm README at bf0742c"),
    "merity-readme-wt2": Preset("wt2", dict(_MERITY_WT2, dropouth=0.2), dict(batch_size=80, epochs=750, seed=1882),
                                "readme", "awd-lstm-lm README at bf0742c"),
    # The code of the paper's time draws a new locked-dropout mask at every time step (locked_mask timestep).
    "merity-tag-ptb": Preset("ptb", dict(_AWD, seed=28, epochs=300, locked_mask="timestep"),
                             dict(batch_size=20, epochs=300, seed=28), "tag", TAG),
    "merity-tag-wt2": Preset("wt2", dict(_MERITY_WT2, seed=20923, epochs=750, locked_mask="timestep"),
                             dict(batch_size=80, epochs=750, seed=1111), "tag", TAG),
}
PRESETS = {name: p.values for name, p in PRESET.items()}


def default_kappa(preset, model):
    return PRESET[preset].kappa.get(model, VARIANTS[model].kappa)


def kappa_values():
    return "; ".join(f"{m} {v.kappa:g}" for m, v in VARIANTS.items()) + "".join(
        f"; {m} on {p} {k:g}" for p, row in PRESET.items() for m, k in row.kappa.items())
