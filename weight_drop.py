"""DropConnect on an LSTM's hidden-to-hidden weights (AWD-LSTM's WeightDrop) on current PyTorch: the parameters are
never swapped (as earlier ports did: stale state_dict, broken deepcopy); each training forward hands the fused
kernel ``torch._VF.lstm`` (tested against ``nn.LSTM``) W_hh * mask instead."""
import warnings

import torch
import torch.nn as nn

from masks import check_dropout_p, dropout_mask, stored_mask

# cuDNN copies a freshly dropped W_hh into its flat buffer on every call, and would warn each time.
_COMPACTION_WARNING = "RNN module weights are not part of single contiguous chunk"
warnings.filterwarnings("ignore", message=_COMPACTION_WARNING)  # and in fused_lstm: test runners reset filters


def fused_lstm(lstm, input, hx, weights, train=True):
    """``lstm``'s fused kernel with ``weights`` for its parameters; ``train``: cuDNN's that can back-propagate."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_COMPACTION_WARNING)
        output, h, c = torch._VF.lstm(input, hx, weights, lstm.bias, lstm.num_layers, lstm.dropout,
                                      train, lstm.bidirectional, lstm.batch_first)
    return output, (h, c)


class WeightDropLSTM(nn.LSTM):
    """``nn.LSTM`` with DropConnect on every ``weight_hh_l{k}``: one mask per training forward, kept for reuse."""

    def __init__(self, input_size, hidden_size, num_layers=1, weight_dropout=0.0, **kwargs):
        if kwargs.get("bidirectional") or kwargs.get("proj_size") or kwargs.get("batch_first"):
            raise ValueError("WeightDropLSTM supports unidirectional, time-major LSTMs without projections")
        super().__init__(input_size, hidden_size, num_layers=num_layers, **kwargs)
        self.weight_dropout = check_dropout_p(weight_dropout)
        self._hh_index = [self._flat_weights_names.index(f"weight_hh_l{k}") for k in range(num_layers)]
        self.mask = None  # (copies, layers, 4H, H) mask of the last training forward; not in state_dict

    def forward(self, input, hx=None, copies=1, share=False, reuse=False):
        """``copies`` > 1: the batch stacks copies of one batch, in one kernel call with one mask if ``share``."""
        N = input.size(1)
        hx = hx if hx is not None else (input.new_zeros(self.num_layers, N, self.hidden_size),) * 2
        if not self.training or self.weight_dropout == 0:
            # An eval-mode pass that is back-propagated (ELD's second pass) needs the training kernel.
            return fused_lstm(self, input, hx, self._flat_weights, train=self.training or torch.is_grad_enabled())
        groups = 1 if (copies == 1 or share) else copies
        w_hh = self._flat_weights[self._hh_index[0]]
        shape = (groups, self.num_layers) + tuple(w_hh.shape)
        self.mask = mask = stored_mask(self, shape) if reuse else dropout_mask(w_hh, shape, self.weight_dropout)
        if groups == 1:
            return fused_lstm(self, input, hx, self._dropped_weights(mask[0]))
        cols = [slice(g * (N // groups), (g + 1) * (N // groups)) for g in range(groups)]
        runs = [fused_lstm(self, input[:, c], (hx[0][:, c], hx[1][:, c]), self._dropped_weights(m))
                for c, m in zip(cols, mask)]
        return torch.cat([out for out, _ in runs], 1), tuple(torch.cat([hc[k] for _, hc in runs], 1) for k in (0, 1))

    def _dropped_weights(self, layer_masks):
        weights = list(self._flat_weights)
        for layer, i in enumerate(self._hh_index):
            weights[i] = weights[i] * layer_masks[layer]
        return weights

    def extra_repr(self):
        return super().extra_repr() + f", weight_dropout={self.weight_dropout}"
