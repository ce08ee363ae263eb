"""Sample text from a checkpoint, one word at a time with the hidden state carried (as pytorch/examples'
word_language_model does), to see what a model has learned.

Each word is drawn from softmax(logits / --temperature): below 1 the text sticks to the likeliest
words, above 1 it wanders.  The same --seed gives the same text on the same device.  Sampling starts
after an '<eos>', i.e. at the start of a sentence; every sampled '<eos>' becomes a line break.

    python generate.py --save runs/awd-ptb_FD.pt --words 200 --temperature 0.8 --seed 1
    python generate.py --save runs/awd-wt2_FD.finetune.pt --words 1000 --outf samples.txt
"""
import os
import sys
import tempfile
from pathlib import Path

import torch
from tqdm import tqdm

from checkpoint import open_checkpoint
from config import tool_parser
from utils import UserError, run_cli


def build_parser():
    p = tool_parser(__doc__, "corpus folder, for its vocabulary (default: the one recorded in the checkpoint)")
    p.add_argument("--words", type=int, default=1000, help="number of words to sample, '<eos>' included")
    p.add_argument("--temperature", type=float, default=1.0, help="divides the logits: lower is more conservative")
    p.add_argument("--seed", type=int, default=1111, help="seed of the sampler")
    p.add_argument("--outf", help="file to write the text to (default: standard output)")
    p.add_argument("--overwrite", action="store_true", help="allow --outf to replace an existing file")
    return p


def check_args(args):
    if args.words <= 0:
        raise UserError(f"--words must be positive, got {args.words}")
    if not args.temperature > 0:
        raise UserError(f"--temperature must be > 0, got {args.temperature}")
    if args.outf and os.path.exists(args.outf) and not args.overwrite:
        raise UserError(f"{args.outf} exists: pass --overwrite to replace it, or choose another --outf")


def open_output(outf):
    """A temporary file beside ``outf``, opened before sampling so an unwritable place fails first;
    renamed onto ``outf`` once the text is complete (an interrupted run leaves no half file)."""
    target = Path(outf)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        umask = os.umask(0o022)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the user's usual permissions
    except OSError as e:
        raise UserError(f"cannot write --outf {outf} ({e.strerror or e}): choose a writable place") from None
    return os.fdopen(fd, "w", encoding="utf-8"), tmp


@torch.no_grad()
def sample(model, dictionary, words, temperature, seed, device):
    """``words`` word ids drawn from the model, starting after '<eos>', hidden state carried."""
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    start = dictionary.word2idx.get("<eos>")
    if start is None:
        start = int(torch.randint(len(dictionary), (1,), generator=gen, device=device))
    inp = torch.full((1, 1), start, dtype=torch.long, device=device)
    hidden = model.init_hidden(1)
    out = []
    for _ in tqdm(range(words), desc="sampling", unit="word", leave=False, disable=None):
        logits, hidden = model(inp, hidden)
        probs = torch.softmax(logits.view(-1).float() / temperature, 0)
        word = torch.multinomial(probs, 1, generator=gen)
        inp.fill_(word.item())
        out.append(dictionary.idx2word[inp.item()])
    return out


def to_text(words):
    """Words separated by spaces, each '<eos>' ending a line."""
    lines, line = [], []
    for w in words:
        if w == "<eos>":
            lines.append(" ".join(line))
            line = []
        else:
            line.append(w)
    if line:
        lines.append(" ".join(line))
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = build_parser().parse_args(argv)
    check_args(args)
    _, corpus, model, device = open_checkpoint(args.save, args.data, args.device)
    out, tmp = open_output(args.outf) if args.outf else (sys.stdout, None)
    try:
        text = to_text(sample(model, corpus.dictionary, args.words, args.temperature, args.seed, device))
        out.write(text)
        out.flush()
        if tmp:
            out.close()
            os.replace(tmp, args.outf)
            print(f"| wrote {args.words} words to {args.outf} |", file=sys.stderr)
    finally:
        if tmp and os.path.exists(tmp):
            out.close()
            os.unlink(tmp)
    return text


if __name__ == "__main__":
    run_cli(main)
