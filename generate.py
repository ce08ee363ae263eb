"""Sample text from a checkpoint, each word from softmax(logits / --temperature) with the hidden state carried,
to see what a model has learned.  The same --seed gives the same text on the same device.

    python generate.py --save runs/awd-ptb_FD.pt --words 200 --temperature 0.8 --seed 1
    python generate.py --save runs/awd-wt2_FD.finetune.pt --words 1000 --outf samples.txt
"""
import sys
import zipfile
from pathlib import Path

import torch
from tqdm import tqdm

from checkpoint import open_checkpoint, tool_args, tool_parser
from runfiles import RUN_FILES, UserError, atomic_write_text, check_output_path, run_cli

RUN_SUFFIXES = (".pt", *(f".{suffix}" for suffix in RUN_FILES.values()))  # a checkpoint, or a file of a run


def check_outf(outf, overwrite):
    """Before sampling: never a folder or a run's file, even with --overwrite; a text file only with --overwrite."""
    target = Path(outf)
    if target.is_dir():
        raise UserError(f"--outf {outf} is a folder: give a file path such as {target / 'samples.txt'}")
    if target.name.endswith(RUN_SUFFIXES) or (target.is_file() and zipfile.is_zipfile(target)):
        raise UserError(f"--outf {outf} names a checkpoint or a file of a run, which text never replaces: choose an "
                        f"--outf such as samples.txt")
    if target.exists() and not overwrite:
        raise UserError(f"{outf} exists: pass --overwrite to replace it, or choose another --outf")
    check_output_path(target, "--outf")


@torch.no_grad()
def sample(model, dictionary, words, temperature, seed, device):
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    start = dictionary.word2idx["<eos>"]  # the text starts after an '<eos>', as every corpus line ends with one
    inp, hidden, out = torch.full((1, 1), start, dtype=torch.long, device=device), model.init_hidden(1), []
    for _ in tqdm(range(words), desc="sampling", unit="word", leave=False, disable=None):
        logits, hidden = model(inp, hidden)
        flat = logits.view(-1).double()  # the top logit scaled is exactly 0: no inf - inf at a tiny temperature
        probs = torch.softmax((flat - flat.max()) / temperature, 0)
        inp.fill_(torch.multinomial(probs, 1, generator=gen).item())
        out.append(dictionary.idx2word[inp.item()])
    return out


def to_text(words):
    """Words separated by spaces, each '<eos>' ending a line."""
    text = "\n".join(line.strip(" ") for line in " ".join(words).split("<eos>"))
    return text if text.endswith("\n") else text + "\n"


def main(argv=None):
    p = tool_parser(__doc__, json=False)
    p.add_argument("--words", type=int, default=1000, help="number of words to sample, '<eos>' included")
    p.add_argument("--temperature", type=float, default=1.0, help="divides the logits: lower is more conservative")
    p.add_argument("--seed", type=int, default=1111, help="seed of the sampler")
    p.add_argument("--outf", help="file to write the text to (default: standard output)")
    p.add_argument("--overwrite", action="store_true", help="allow --outf to replace an existing file")
    args = tool_args(p, argv, {"words": "positive_int", "temperature": "positive", "seed": "seed"})
    if args.outf:
        check_outf(args.outf, args.overwrite)
    _, corpus, model, device = open_checkpoint(args)
    text = to_text(sample(model, corpus.dictionary, args.words, args.temperature, args.seed, device))
    if args.outf:  # whole or not at all; a full disk is one line and leaves no temp file
        atomic_write_text(text, args.outf)
        print(f"| wrote {args.words} words to {args.outf} |", file=sys.stderr)
    else:
        print(text, end="", flush=True)
    return text


if __name__ == "__main__":
    run_cli(main)
