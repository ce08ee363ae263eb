"""AWD-LSTM, as the paper's single-layer ablation (full-shape masks: ``locked=False``) or with 3 layers.  Each dropout
site keeps its last mask for a second pass; a batch can stack copies of itself with own or shared masks (Masks)."""
from typing import NamedTuple

import torch.nn as nn

from embed_regularize import EmbeddingDropout
from fraternal import Masks
from fused_loss import FusedDecoder
from locked_dropout import LockedDropout
from weight_drop import WeightDropLSTM


class Features(NamedTuple):
    hidden: list  # each layer's final (h, c)
    raw_outputs: list  # each layer's output before dropout
    outputs: list  # each layer's output after dropout


class RNNModel(nn.Module):
    @classmethod
    def from_config(cls, cfg, ntoken):
        """The model a run's config describes (before locked_mask existed: "sequence")."""
        return cls(ntoken, ninp=cfg["emsize"], nhid=cfg["nhid"], nlayers=cfg["nlayers"], dropout=cfg["dropout"],
                   dropouth=cfg["dropouth"], dropouti=cfg["dropouti"], dropoute=cfg["dropoute"], wdrop=cfg["wdrop"],
                   tie_weights=cfg["tied"], locked=cfg["locked"], locked_mask=cfg.get("locked_mask", "sequence"))

    def __init__(self, ntoken, ninp=400, nhid=1150, nlayers=3, dropout=0.4, dropouth=0.3,
                 dropouti=0.4, dropoute=0.1, wdrop=0.5, tie_weights=True, locked=True, locked_mask="sequence"):
        super().__init__()
        self.ntoken, self.nlayers = ntoken, nlayers
        # No padding_idx=0 (unlike the FD code): word 0 is a real word, its row must get gradients.
        self.encoder = nn.Embedding(ntoken, ninp)
        sizes = [ninp] + [nhid] * (nlayers - 1) + [ninp if tie_weights else nhid]
        self.rnns = nn.ModuleList(WeightDropLSTM(sizes[l], sizes[l + 1], weight_dropout=wdrop) for l in range(nlayers))
        self.decoder = FusedDecoder(sizes[-1], ntoken)
        if tie_weights:
            self.decoder.weight = self.encoder.weight
        self.embedding_dropout = EmbeddingDropout(dropoute)
        kind = locked_mask if locked else "full"
        self.input_dropout = LockedDropout(dropouti, kind)
        self.hidden_dropouts = nn.ModuleList(LockedDropout(dropouth, kind) for _ in range(nlayers - 1))
        self.output_dropout = LockedDropout(dropout, kind)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        if not tie_weights:
            nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def set_dropout(self, dropout=None, dropouth=None, dropouti=None, dropoute=None, wdrop=None):
        """Change dropout rates in place (they are not part of the state_dict)."""
        for rate, modules, attribute in ((dropout, [self.output_dropout], "p"), (dropouth, self.hidden_dropouts, "p"),
                                         (dropouti, [self.input_dropout], "p"), (wdrop, self.rnns, "weight_dropout"),
                                         (dropoute, [self.embedding_dropout], "p")):
            for m in modules if rate is not None else ():
                setattr(m, attribute, rate)

    def init_hidden(self, bsz):
        return [tuple(self.decoder.bias.new_zeros(1, bsz, rnn.hidden_size) for _ in "hc") for rnn in self.rnns]

    def features(self, input, hidden, masks=None):
        """input (seq_len, batch) -> new hidden state, each layer's outputs before and after dropout."""
        masks = masks or Masks()
        kw = lambda site: dict(copies=masks.copies, share=site in masks.share, reuse=site in masks.reuse)  # noqa: E731
        emb = self.embedding_dropout(self.encoder.weight, input, **kw("e"))
        output = self.input_dropout(emb, **kw("i"))
        new_hidden, raw_outputs, outputs = [], [], []
        for l, rnn in enumerate(self.rnns):
            output, h = rnn(output, hidden[l], **kw("w"))
            new_hidden.append(h)
            raw_outputs.append(output)
            if l != self.nlayers - 1:
                output = self.hidden_dropouts[l](output, **kw("h"))
                outputs.append(output)
        outputs.append(self.output_dropout(output, **kw("o")))
        return Features(new_hidden, raw_outputs, outputs)

    def forward(self, input, hidden, masks=None):
        """input (seq_len, batch) -> logits (seq_len, batch, ntoken) before softmax, new hidden state."""
        f = self.features(input, hidden, masks)
        return self.decoder(f.outputs[-1]), f.hidden
