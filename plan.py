"""The table runner's plan, pure and torch-free: rows to chains (one per chain and seed), chains to steps.
Commands name files under {out} and the corpus as {data}, so a record stays valid when --out moves as a whole."""
import math
from dataclasses import dataclass
from typing import Optional

import rows
from rows import STAGES, lineage
from runfiles import UserError

SIDE_FILES = ("resume.pt", "metrics.jsonl", "final.json")  # re-derivable or not needed once recorded
# Per scale: flags added before each stage's own, and the corpus cut (lines of train / valid / test).
SCALES = {"full": dict(cut=None),
          "tiny": dict(train=("--emsize", "16", "--nhid", "16", "--epochs", "2", "--batch_size", "4", "--bptt", "10"),
                       finetune=("--epochs", "1", "--batch_size", "4"), pointer=("--bptt", "1000"), cut=(200, 30, 30))}
# Whole-corpus training batches, from which dynamiceval.DEFAULTS derives its settings (a cut cannot): same floats.
DYNEVAL_BATCHES = {"penn": 1859, "wikitext-2": 4177}


@dataclass(eq=False)
class Step:
    chain: str
    corpus: str
    seed: int
    stage: str
    template: list  # tool and flags, {out} / {data} unresolved, no --device
    upstream: Optional["Step"] = None

    def __post_init__(self):
        self.id, self.dir, self.kind = f"{self.chain}:{self.stage}", f"{self.chain}/seed{self.seed}", STAGES[self.stage]

    def path(self, what):
        """Relative to --out: "output" (the primary file), "record", "log", or a side file."""
        suffix = {"output": "pt" if self.kind.trains else "json", "record": "step.json"}.get(what, what)
        return f"{self.dir}/{self.stage}.{suffix}"

    def files(self):
        """What a run of this step writes (never its lock): what is in the way of a fresh start."""
        return [self.path("output")] + ([self.path(s) for s in SIDE_FILES] if self.kind.trains else [])


@dataclass(eq=False)
class ChainRun:
    chain: rows.Chain
    seed: int
    steps: list
    rows: list
    failure: dict = None
    proc: object = None  # the running step's process
    current: int = 0

    def __post_init__(self):
        self.label = f"{self.chain.id} seed {self.seed}"

    def summary(self):
        f = self.failure
        return f"FAILED {self.label}, step {f['step']}: {f['reason']}; log {f['log']}" if f else f"{self.label} done"


def stage_step(chain, seed, stage, scale, upstream, args):
    own, kind, flags = f"{{out}}/{chain.id}/seed{seed}/{stage}", STAGES[stage], SCALES[scale].get(stage, ())
    if stage == "dyneval" and SCALES[scale]["cut"]:
        n = DYNEVAL_BATCHES[chain.corpus]
        flags = ("--lr", repr(0.002 / math.sqrt(n)), "--lamb", repr(0.02 / 14), "--epsilon", repr(0.001 / math.sqrt(n)))
    if upstream is None:
        template = [kind.tool, *flags, *chain.train, "--seed", str(seed), "--data", "{data}", "--save", own + ".pt"]
    else:
        template = [kind.tool, "--save", f"{{out}}/{upstream.path('output')}",
                    *(["--out", own + ".pt"] if kind.trains else []), "--data", "{data}", *flags, *args,
                    *([] if kind.trains else ["--json"])]
    return Step(chain.id, chain.corpus, seed, stage, template, upstream)


def plan_chains(selected, seeds, scale, default_seed):
    """One ChainRun per chain and seed with the steps its rows need; default_seed(chain) where --seeds names none."""
    plan = []
    for chain_id in dict.fromkeys(r.chain for r in selected):
        chain, chain_rows = rows.CHAIN[chain_id], [r for r in selected if r.chain == chain_id]
        for seed in dict.fromkeys(seeds or [default_seed(chain)]):  # a seed named twice runs once
            steps = {}
            for stage in (s for s in STAGES if any(s in lineage(r.stage) for r in chain_rows)):
                args = next((r.args for r in chain_rows if r.stage == stage), ())
                steps[stage] = stage_step(chain, seed, stage, scale, steps.get(STAGES[stage].reads), args)
            plan.append(ChainRun(chain, seed, list(steps.values()), chain_rows))
    return plan


def redo_set(plan, names):
    """The steps --redo names (CHAIN:STAGE, or CHAIN for its whole chain) and every step computed from them."""
    ids = {s.id for run in plan for s in run.steps}
    for name in names:
        if name not in ids and f"{name}:train" not in ids:
            raise UserError(f"--redo {name}: no such step in this plan; CHAIN:STAGE, one of {' '.join(sorted(ids))}")
    chosen = set()
    for step in (s for run in plan for s in run.steps):  # each step after its upstream
        if step.id in names or step.chain in names or step.upstream in chosen:
            chosen.add(step)
    return chosen
