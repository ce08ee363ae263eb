"""DropConnect on the hidden-to-hidden weights of an LSTM (AWD-LSTM's WeightDrop), on current PyTorch.

Earlier ports swapped ``weight_hh_l0`` for a dropped copy on the module itself; that left stale
tensors in the state_dict, broke deepcopy and failed with "cannot assign ... as parameter" after
``eval()``.  Here the module's parameters are never touched: each training forward hands the fused
LSTM kernel (cuDNN on GPU) a weight list in which W_hh is replaced by ``W_hh * mask``.  Gradients
flow to the raw weight through that product, two forwards before one backward use two masks, and
the state_dict has exactly the keys of a plain ``nn.LSTM``.

The one private entry point used, ``torch._VF.lstm`` (the call ``nn.LSTM.forward`` makes itself),
is pinned in ``fused_lstm`` below and tested against ``nn.LSTM``.
"""
import warnings

import torch
import torch.nn as nn

from masks import check_dropout_p, dropout_mask, stored_mask

# cuDNN wants all weights in one flat buffer; a freshly dropped W_hh must be copied into one on
# every call (unavoidable with new masks), and PyTorch would warn about that on every call.
_COMPACTION_WARNING = "RNN module weights are not part of single contiguous chunk"
warnings.filterwarnings("ignore", message=_COMPACTION_WARNING)


def fused_lstm(lstm, input, hx, weights, train=None):
    """Run ``lstm``'s fused kernel with ``weights`` in place of its own parameters (same order).

    ``train`` (default ``lstm.training``) selects cuDNN's training kernel, the only one it can
    back-propagate through.  The compaction warning is silenced here as well as globally, since
    test runners and notebooks reset the global filters."""
    train = lstm.training if train is None else train
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_COMPACTION_WARNING)
        output, h, c = torch._VF.lstm(input, hx, weights, lstm.bias, lstm.num_layers, lstm.dropout,
                                      train, lstm.bidirectional, lstm.batch_first)
    return output, (h, c)


class WeightDropLSTM(nn.LSTM):
    """``nn.LSTM`` with DropConnect of probability ``weight_dropout`` on every ``weight_hh_l{k}``.

    One mask per forward pass, scaled by 1/(1-p), nothing dropped in eval mode.  The last mask is
    kept so a second pass can reuse it (fraternal dropout's ``same_mask_w``).
    """

    def __init__(self, input_size, hidden_size, num_layers=1, weight_dropout=0.0, **kwargs):
        if kwargs.get("bidirectional") or kwargs.get("proj_size") or kwargs.get("batch_first"):
            raise ValueError("WeightDropLSTM supports unidirectional, time-major LSTMs without projections")
        super().__init__(input_size, hidden_size, num_layers=num_layers, **kwargs)
        self.weight_dropout = check_dropout_p(weight_dropout)
        self._hh_index = [self._flat_weights_names.index(f"weight_hh_l{k}") for k in range(num_layers)]
        self.mask = None  # (copies, layers, 4H, H) mask of the last training forward; not in state_dict

    def forward(self, input, hx=None, copies=1, share=False, reuse=False):
        """input: (seq_len, batch, features).  With ``copies`` > 1 the batch stacks that many copies
        of one batch; ``share`` runs them all with one mask in one kernel call, otherwise each copy
        gets its own mask and kernel call."""
        N = input.size(1)
        if hx is None:
            zeros = input.new_zeros(self.num_layers, N, self.hidden_size)
            hx = (zeros, zeros)
        if not self.training or self.weight_dropout == 0:
            # An eval-mode pass that is back-propagated (ELD's second pass) needs the training kernel.
            return fused_lstm(self, input, hx, self._flat_weights, train=self.training or torch.is_grad_enabled())
        groups = 1 if (copies == 1 or share) else copies
        w_hh = [self._flat_weights[i] for i in self._hh_index]
        shape = (groups, self.num_layers) + tuple(w_hh[0].shape)
        mask = stored_mask(self, shape) if reuse else dropout_mask(w_hh[0], shape, self.weight_dropout)
        self.mask = mask
        if groups == 1:
            return fused_lstm(self, input, hx, self._dropped_weights(mask[0]))
        B = N // groups
        outs, hs, cs = [], [], []
        for g in range(groups):
            cols = slice(g * B, (g + 1) * B)
            out, (h, c) = fused_lstm(self, input[:, cols], (hx[0][:, cols], hx[1][:, cols]),
                                     self._dropped_weights(mask[g]))
            outs.append(out)
            hs.append(h)
            cs.append(c)
        return torch.cat(outs, 1), (torch.cat(hs, 1), torch.cat(cs, 1))

    def _dropped_weights(self, layer_masks):
        weights = list(self._flat_weights)
        for layer, i in enumerate(self._hh_index):
            weights[i] = weights[i] * layer_masks[layer]
        return weights

    def extra_repr(self):
        return super().extra_repr() + f", weight_dropout={self.weight_dropout}"
