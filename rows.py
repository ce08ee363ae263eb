"""The paper's rows, each declared once (run, published validation / test perplexity, source): reproduce.py runs them
and writes README's table from them. A chain is one training run and every step computed from it; its rows share it."""
from collections import namedtuple

TABLES = ("single", "ptb", "wt2")
# reads: the stage whose checkpoint it reads; trains: it writes a checkpoint, resume point, metrics and final.json.
Stage = namedtuple("Stage", "tool reads trains")
# A new evaluation method: one entry here (a tool reading --save, printing one JSON line with --json) and its rows.
STAGES = {"train": Stage("main.py", None, True), "finetune": Stage("finetune.py", "train", True),
          "pointer": Stage("pointer.py", "finetune", False), "dyneval": Stage("dynamiceval.py", "finetune", False)}
# train: main.py's flags; table: None to run only when named; save: README's --save where the default would clash.
Chain = namedtuple("Chain", "id corpus train table save", defaults=(None,))
# stage: the step whose result is the row's number; published: (valid, test) or None; args: the stage tool's flags.
Row = namedtuple("Row", "id chain stage what published source args", defaults=((),))

FD = "Zolna et al. 2018 (fraternal dropout)"
FD_SINGLE = f"{FD}, single-layer PTB ablation table"
MERITY = "Merity et al. 2017 (arXiv 1708.02182)"
README = "awd-lstm-lm README at bf0742c"
TAG = "awd-lstm-lm at tag PyTorch==0.1.12 (its README)"
KRAUSE = ("Krause et al. 2018 (arXiv 1709.07432), dynamic eval of their own AWD-LSTM models (which did not reach "
          "Merity et al.'s numbers; their starting perplexities: not stated here); this row starts from ours")
# Pointer settings per source (the paper's PTB window 2000 is in awd-lstm-lm's README history, 19470c8); every
# published cache number came from awd-lstm-lm's pointer.py, so these rows score as it did (--awd_scoring).
POINTER_PAPER_PTB = ("--window", "2000", "--theta", "1.0", "--lambdasm", "0.1", "--awd_scoring")
POINTER_README_PTB = ("--window", "500", "--theta", "1.0", "--lambdasm", "0.1", "--awd_scoring")
POINTER_WT2 = ("--window", "3785", "--theta", "0.662", "--lambdasm", "0.1279", "--awd_scoring")

CHAINS = [
    Chain("single-FD", "penn", ("--preset", "single", "--model", "FD"), "single"),
    Chain("single-FD-samew", "penn", ("--preset", "single", "--model", "FD", "--same_mask_w"), "single",
          save="runs/single_FD_samew.pt"),
    Chain("awd-ptb-FD", "penn", ("--preset", "awd-ptb", "--model", "FD"), "ptb"),
    Chain("merity-ptb", "penn", ("--preset", "merity-ptb", "--model", "baseline"), "ptb"),
    Chain("merity-readme-ptb", "penn", ("--preset", "merity-readme-ptb", "--model", "baseline"), "ptb"),
    Chain("awd-wt2-FD", "wikitext-2", ("--preset", "awd-wt2", "--model", "FD"), "wt2"),
    Chain("merity-wt2", "wikitext-2", ("--preset", "merity-wt2", "--model", "baseline"), "wt2"),
    Chain("merity-readme-wt2", "wikitext-2", ("--preset", "merity-readme-wt2", "--model", "baseline"), "wt2"),
    Chain("single-ELD", "penn", ("--preset", "single", "--model", "ELD"), None),
    Chain("single-PM", "penn", ("--preset", "single", "--model", "PM"), None),
    Chain("awd-ptb-baseline", "penn", ("--preset", "awd-ptb", "--model", "baseline"), None),
    Chain("awd-wt2-baseline", "wikitext-2", ("--preset", "awd-wt2", "--model", "baseline"), None),
    Chain("merity-tag-ptb", "penn", ("--preset", "merity-tag-ptb", "--model", "baseline"), None),
    Chain("merity-tag-wt2", "wikitext-2", ("--preset", "merity-tag-wt2", "--model", "baseline"), None),
]
FT, CACHE = "... then fine-tuned", "... fine-tuned, with the cache pointer (window "
ROWS = [
    Row("single-FD", "single-FD", "train", "single-layer PTB, FD (kappa 0.15)", (67.5, 64.9), FD_SINGLE),
    Row("single-FD-samew", "single-FD-samew", "train", "single-layer PTB, FD, same W_hh mask", (66.9, 64.6), FD_SINGLE),
    Row("awd-ptb-FD", "awd-ptb-FD", "train", "3-layer AWD-LSTM PTB, FD (kappa 0.1)", (59.8, 58.0), f"{FD}, PTB table"),
    Row("awd-ptb-FD-ft", "awd-ptb-FD", "finetune", FT, (58.9, 56.8), f"{FD}, PTB table"),
    Row("merity-ptb", "merity-ptb", "train", "AWD-LSTM, the paper's PTB recipe (500 epochs: the authors' later note, "
        "not the text's 750)", (60.7, 58.8), f"{MERITY}, model ablation table (- fine-tuning)"),
    Row("merity-ptb-ft", "merity-ptb", "finetune", FT, (60.0, 57.3), f"{MERITY}, PTB table"),
    Row("merity-ptb-cache", "merity-ptb", "pointer", CACHE + "2000)", (53.9, 52.8), f"{MERITY}, PTB table",
        POINTER_PAPER_PTB),
    Row("merity-ptb-dyneval", "merity-ptb", "dyneval", "... fine-tuned, with dynamic evaluation", (51.6, 51.1), KRAUSE),
    Row("merity-readme-ptb", "merity-readme-ptb", "train", "AWD-LSTM, the README's PTB command", (61.2, 58.8), README),
    Row("merity-readme-ptb-ft", "merity-readme-ptb", "finetune", FT, (58.8, 56.5), README),
    Row("merity-readme-ptb-cache", "merity-readme-ptb", "pointer", CACHE + "500)", (53.2, 52.5), README,
        POINTER_README_PTB),
    Row("awd-wt2-FD", "awd-wt2-FD", "train", "3-layer AWD-LSTM WikiText-2, FD (kappa 0.1)", (68.3, 65.3),
        f"{FD}, WikiText-2 table"),
    Row("awd-wt2-FD-ft", "awd-wt2-FD", "finetune", FT, (66.8, 64.1), f"{FD}, WikiText-2 table"),
    Row("merity-wt2", "merity-wt2", "train", "AWD-LSTM, the paper's WikiText-2 recipe", (69.1, 66.0),
        f"{MERITY}, model ablation table (- fine-tuning)"),
    Row("merity-wt2-ft", "merity-wt2", "finetune", FT, (68.6, 65.8), f"{MERITY}, WikiText-2 table"),
    Row("merity-wt2-cache", "merity-wt2", "pointer", CACHE + "3785)", (53.8, 52.0),
        f"{MERITY}, WikiText-2 table; pointer settings from the README (the paper states none)", POINTER_WT2),
    Row("merity-wt2-dyneval", "merity-wt2", "dyneval", "... fine-tuned, with dynamic evaluation", (46.4, 44.3), KRAUSE),
    Row("merity-readme-wt2", "merity-readme-wt2", "train", "AWD-LSTM, the README's WikiText-2 command", (68.7, 65.6),
        README),
    Row("merity-readme-wt2-ft", "merity-readme-wt2", "finetune", FT, (67.4, 64.7), README),
    Row("merity-readme-wt2-cache", "merity-readme-wt2", "pointer", CACHE + "3785)", (52.2, 50.6), README, POINTER_WT2),
    Row("single-ELD", "single-ELD", "train", "single-layer PTB, ELD (kappa 0.25)", None, "none recorded here"),
    Row("single-PM", "single-PM", "train", "single-layer PTB, Pi-model (kappa 0.15)", None, "none recorded here"),
    Row("awd-ptb-baseline", "awd-ptb-baseline", "train", "FD's PTB recipe without FD (kappa 0, one pass)", None,
        "none published"),
    Row("awd-wt2-baseline", "awd-wt2-baseline", "train", "FD's WikiText-2 recipe without FD", None, "none published"),
    Row("merity-tag-ptb", "merity-tag-ptb", "train", "AWD-LSTM, the 2017 code's exact PTB recipe (per-step dropout "
        "mask)", (61.2, 58.9), TAG),
    Row("merity-tag-ptb-ft", "merity-tag-ptb", "finetune", FT, (58.8, 56.6), TAG),
    Row("merity-tag-ptb-cache", "merity-tag-ptb", "pointer", CACHE + "500)", (53.5, 53.0), TAG, POINTER_README_PTB),
    Row("merity-tag-wt2", "merity-tag-wt2", "train", "AWD-LSTM, the 2017 code's exact WikiText-2 recipe (per-step "
        "dropout mask)", (69.1, 66.1), TAG),
    Row("merity-tag-wt2-ft", "merity-tag-wt2", "finetune", FT, (68.7, 65.8), TAG),
    Row("merity-tag-wt2-cache", "merity-tag-wt2", "pointer", CACHE + "3785)", (53.6, 52.0), TAG, POINTER_WT2),
]

CHAIN = {c.id: c for c in CHAINS}
ROW = {r.id: r for r in ROWS}


def lineage(stage):
    """The stages ``stage`` is computed from, first to last, itself included."""
    return (lineage(STAGES[stage].reads) if STAGES[stage].reads else []) + [stage]


def select(names):
    """(rows in registry order, None), else (None, the unknown name); a row id brings its upstream rows (no cost)."""
    wanted = set()
    for name in names:
        if name == "all" or name in TABLES:
            wanted |= {r.id for r in ROWS if CHAIN[r.chain].table is not None and name in ("all", CHAIN[r.chain].table)}
        elif name in ROW:
            row = ROW[name]
            wanted |= {r.id for r in ROWS if r.chain == row.chain and (r.id == name or r.stage in lineage(row.stage))}
        else:
            return None, name
    return [r for r in ROWS if r.id in wanted], None


def readme_table():
    """README's table of rows: each row's own step as a person types it, with main.py's default paths."""
    lines = ["| row | run | command | published valid / test ppl | source |", "|---|---|---|---|---|"]
    for row in ROWS:
        chain, stage = CHAIN[row.chain], STAGES[row.stage]
        save = chain.save or f"runs/{chain.train[1]}_{chain.train[3]}.pt"
        read = save if stage.reads == "train" else save[:-len(".pt")] + ".finetune.pt"
        command = (f"python {stage.tool} --save {read}" if stage.reads else
                   "python main.py " + " ".join(chain.train) + (f" --save {save}" if chain.save else ""))
        published = f"{row.published[0]} / {row.published[1]}" if row.published else "-"
        lines.append(f"| `{row.id}` | {row.what} | `{command}{''.join(f' {a}' for a in row.args)}` | {published} | "
                     f"{row.source} |")
    return "\n".join(lines) + "\n"
