"""fraternal.fraternal_loss_pair on the decoder's outputs, in one autograd function that works in row chunks.

A batch's logits are large (single-layer PTB: 90 MB per pass), and as full-size tensors the step is memory-bound.
Here each chunk is decoded, scored and differentiated in cache, in the forward; tested equal to the plain loss."""
import torch
import torch.nn as nn

FUSED_PENALTIES = ("mse", "kl")


def chunk_rows(vocab, device):
    """Rows per chunk: 8 MB of logits on CPU (cache-resident), 256 MB on GPU."""
    return max(16, ((256 << 20) if device.type == "cuda" else (8 << 20)) // (4 * vocab))


class _DecoderLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x1, x2, weight, bias, targets, w1, w2, kappa, penalty, rows):
        n, vocab = x1.size(0), weight.size(0)
        second = x2 is not None
        grad_x1, grad_x2 = torch.empty_like(x1), torch.empty_like(x2) if second else None
        grad_w, grad_b = torch.zeros_like(weight), torch.zeros_like(bias)
        ce1, ce2, pen = x1.new_zeros(()), x1.new_zeros(()), x1.new_zeros(())
        wt = weight.t()
        for start in range(0, n, rows):
            sl = slice(start, start + rows)
            tgt = targets[sl].unsqueeze(1)
            logits1 = torch.addmm(bias, x1[sl], wt)
            logp1 = torch.log_softmax(logits1, dim=1)
            ce1 -= logp1.gather(1, tgt).sum()
            if second:
                logits2 = torch.addmm(bias, x2[sl], wt)
                logp2 = torch.log_softmax(logits2, dim=1) if w2 != 0 or penalty == "kl" else None
                if w2 != 0:
                    ce2 -= logp2.gather(1, tgt).sum()
                if penalty == "mse":
                    diff = logits1.sub_(logits2)  # logits are not needed any more
                    pen += torch.dot(diff.view(-1), diff.view(-1))
                    g_pen1, g_pen2 = diff.mul_(2.0 * kappa / (n * vocab)), None
                else:
                    p1, p2 = logp1.exp(), logp2.exp()
                    log_ratio = logp1 - logp2
                    kl12 = (p1 * log_ratio).sum(1, keepdim=True)
                    kl21 = -(p2 * log_ratio).sum(1, keepdim=True)
                    pen += (kl12 + kl21).sum()
                    # d/dlogits1 of (KL12 + KL21) = p1 * (log p1 - log p2 - KL12) + p1 - p2, and symmetrically
                    g_pen1 = (p1 * (log_ratio - kl12) + p1 - p2).mul_(kappa / (2.0 * n))
                    g_pen2 = (p2 * (-log_ratio - kl21) + p2 - p1).mul_(kappa / (2.0 * n))
                g2 = _softmax_grad(logp2, tgt, w2 / n) if w2 != 0 else None
                if g_pen2 is None:
                    g2 = g2.sub_(g_pen1) if g2 is not None else g_pen1.neg()
                else:
                    g2 = g2.add_(g_pen2) if g2 is not None else g_pen2
                torch.mm(g2, weight, out=grad_x2[sl])
                grad_w.addmm_(g2.t(), x2[sl])
                grad_b += g2.sum(0)
            g1 = _softmax_grad(logp1, tgt, w1 / n)
            if second:
                g1.add_(g_pen1)
            torch.mm(g1, weight, out=grad_x1[sl])
            grad_w.addmm_(g1.t(), x1[sl])
            grad_b += g1.sum(0)
        ce1, ce2 = ce1 / n, ce2 / n
        pen = pen / (n * vocab) if penalty == "mse" else pen / (2.0 * n)
        loss = w1 * ce1 + w2 * ce2 + kappa * pen
        ctx.save_for_backward(grad_x1, grad_x2 if second else grad_x1, grad_w, grad_b)
        ctx.second = second
        ce1, pen = ce1.detach(), (kappa * pen).detach()
        ctx.mark_non_differentiable(ce1, pen)
        return loss, ce1, pen

    @staticmethod
    def backward(ctx, grad_loss, _grad_ce, _grad_pen):
        grad_x1, grad_x2, grad_w, grad_b = ctx.saved_tensors
        return (grad_x1 * grad_loss, grad_x2 * grad_loss if ctx.second else None, grad_w * grad_loss,
                grad_b * grad_loss, None, None, None, None, None, None)


def _softmax_grad(logp, tgt, scale):
    """scale * (softmax - one_hot(target)), written over the log-probabilities' storage."""
    grad = logp.exp_().mul_(scale)
    grad.scatter_add_(1, tgt, grad.new_full(tgt.shape, -scale))
    return grad


def decoder_loss(x1, x2, weight, bias, targets, w1=1.0, w2=0.0, kappa=0.0, penalty="mse", rows=None):
    """Decode ``x1`` (and ``x2``, pass 2's, or None): (loss, CE of pass 1, kappa * penalty), the last two detached."""
    if x2 is None and (w2 != 0 or kappa != 0):
        raise ValueError("a second pass is needed for w2 or kappa")
    if penalty not in FUSED_PENALTIES:
        raise ValueError(f"the fused loss has no gradient for penalty {penalty!r}: use the plain loss")
    rows = rows or chunk_rows(weight.size(0), x1.device)
    return _DecoderLoss.apply(x1, x2, weight, bias, targets, float(w1), float(w2), float(kappa), penalty, rows)


class FusedDecoder(nn.Linear):
    """A model's decoder: an ``nn.Linear`` that offers fraternal.fraternal_loss the loss above."""
    said = set()  # penalties already said to run on the plain path

    def fused_loss(self, x1, x2, targets, w1, w2, kappa, penalty):
        """None for a penalty without a gradient here: the plain path then, said once."""
        if penalty in FUSED_PENALTIES:
            return decoder_loss(x1, x2, self.weight, self.bias, targets, w1, w2, kappa, penalty)
        if penalty not in self.said:
            self.said.add(penalty)
            print(f"penalty {penalty!r} has no hand-derived gradient in fused_loss.py: the plain loss computes it")
        return None
