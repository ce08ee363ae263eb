"""Checkpoints: a state_dict plus a plain config dict, loadable with ``weights_only=True`` so they survive
PyTorch upgrades and are safe to open.  Kinds: ``best`` and ``resume`` (adds optimizer, schedule, RNG states)."""
import argparse
import pickle
import random
from pathlib import Path

import numpy as np
import torch

from config import SETTINGS, check_flags, with_settings_added_since
from data import Corpus
from model import RNNModel
from runfiles import UserError, sidecar
from utils import atomic_torch_save, get_device, weights_sha256

FORMAT = "fraternal-dropout-checkpoint-v1"
# Vocabulary fingerprints of getdata.sh's corpora: a checkpoint's corpus is its vocabulary's, never a folder's.
CORPORA = {"6f75f9b77981aa692ec71340f6152e1d94d98bc927ade6da20da7da68e3e55d1": "ptb",
           "45f2cb999804e259059676fa2bf5b12999229a0c33dae878ae690fd8c84427eb": "wt2"}


def corpus_of(blob):
    """'ptb' or 'wt2' from the checkpoint's own vocabulary; None when it is neither corpus."""
    return CORPORA.get(blob["vocab"].get("sha256"))


def schedule_finished(resume, epochs):
    """A run ended by its schedule (Ctrl-C also writes final.json, so that file alone is not enough)."""
    try:
        schedule = load_checkpoint(resume, "resume")["schedule"]
    except UserError:
        return False
    return bool(schedule["stopped"]) or schedule["epoch"] >= epochs


def vocab_info(dictionary):
    return {"size": len(dictionary), "sha256": dictionary.fingerprint()}


def save_checkpoint(path, kind, model, config, vocab, **extra):
    """``extra``: what else the checkpoint holds (epoch, schedule, ``run``: the id every file of a run carries)."""
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save({"format": FORMAT, "kind": kind, "config": dict(config), "vocab": vocab, "model": weights,
                       "weights_sha256": weights_sha256(weights), **extra}, path)


def load_checkpoint(path, kind=None):
    """Read a checkpoint of this project, or end with a clear UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}: check the path (train one with main.py --save {path})")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- a text file, a truncated zip, ...: one line whatever torch raises
        if isinstance(e, pickle.UnpicklingError) and "Unsupported global" in str(e):
            raise UserError(f"{path} is not a checkpoint of this project (it holds pickled Python objects, e.g. "
                            f"a model saved by PyTorch 0.2 code): use one written by main.py or finetune.py") from None
        first = (str(e).strip() or type(e).__name__).splitlines()[0].split(". ")[0].rstrip(".")[:120]
        raise UserError(f"cannot read checkpoint {path} (truncated or not a PyTorch file: {first}): "
                        f"use an intact checkpoint written by main.py") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise UserError(f"{path} is not a checkpoint of this project (no '{FORMAT}' marker): "
                        f"use a checkpoint written by main.py or finetune.py")
    if problem := _malformed(blob):
        raise UserError(f"{path} has the marker of this project's checkpoints but is damaged or hand-made "
                        f"({problem}): use a checkpoint written by main.py or finetune.py")
    if "weights_sha256" in blob and blob["weights_sha256"] != weights_sha256(blob["model"]):
        raise UserError(f"{path} is damaged: its weights do not match the checksum stored with them (a changed "
                        f"or corrupted file): use an intact copy, or its run's other checkpoint")
    if kind is not None and blob["kind"] != kind:
        if blob["kind"] == "resume":
            tool = "finetune.py" if blob["config"].get("stage") == "finetune" else "main.py"
            hint = f"it is a resume point: continue its run with {tool} --resume {path}"
        else:
            hint = (f"it holds a best model, not a resume point: pass its run's {sidecar(path, 'resume.pt').name}"
                    if not str(path).endswith(".resume.pt") else
                    "it holds a best model although named like a resume point: evaluate or fine-tune it instead")
        raise UserError(f"{path} is a '{blob['kind']}' checkpoint, a '{kind}' one is needed here; {hint}")
    return blob


def model_keys(settings=SETTINGS):
    """Settings added since are left out: ``with_settings_added_since`` fills them in for older checkpoints."""
    return tuple(s.name for s in settings if s.group == "model" and s.before is None) + ("bptt", "data", "preset")


MODEL_KEYS = model_keys()


def _malformed(blob):
    """What is missing or wrong in a checkpoint dict, or None."""
    if blob.get("kind") not in ("best", "resume"):
        return f"kind {blob.get('kind')!r}"
    missing = [k for k in ("config", "vocab", "model") if not isinstance(blob.get(k), dict)]
    if missing := missing + [k for k in ("schedule", "optimizer", "rng") if blob["kind"] == "resume" and k not in blob]:
        return f"no {', '.join(missing)}"
    if missing := [k for k in MODEL_KEYS if k not in blob["config"]] + [f"vocab {k}" for k in ("size", "sha256")
                                                                        if k not in blob["vocab"]]:
        return f"its config lacks {', '.join(missing)}"
    if not all(isinstance(v, torch.Tensor) for v in blob["model"].values()):
        return "its weights are not all tensors"
    if not isinstance(blob.get("weights_sha256", ""), str):
        return "its weights checksum is not a string"
    return None


def load_weights(model, blob, what="the checkpoint"):
    try:
        model.load_state_dict(blob["model"])
    except RuntimeError as e:
        detail = str(e).strip().splitlines()
        detail = detail[1].strip() if len(detail) > 1 else detail[0]
        raise UserError(f"the weights in {what} do not fit the model its config describes ({detail[:160]}): "
                        f"use an intact checkpoint written by main.py") from None


def check_vocab(blob, dictionary, what, data):
    """``what``: how the message names the checkpoint ("checkpoint runs/a.pt", "the resume checkpoint")."""
    if blob["vocab"] != vocab_info(dictionary):
        size = blob["vocab"]["size"]
        theirs = ("other words of the same count" if size == len(dictionary) else f"{len(dictionary)} words")
        raise UserError(f"{what} was trained on a vocabulary of {size} words, the corpus at {data} has {theirs}: "
                        f"pass the --data folder the model was trained on")


def model_from_checkpoint(blob, device):
    try:
        model = RNNModel.from_config(with_settings_added_since(blob["config"]), blob["vocab"]["size"])
    except (TypeError, ValueError, RuntimeError) as e:
        raise UserError(f"the config in this checkpoint does not describe a model ({e}): "
                        f"use an intact checkpoint written by main.py") from None
    load_weights(model, blob)
    return model.to(device)


def tool_parser(doc, json=True):
    """The command line every tool that reads a checkpoint starts from."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--save", required=True, help="the checkpoint to read (never changed): a run's best model")
    p.add_argument("--allow_resume_point", action="store_true", help="also read a resume point (last epoch's weights)")
    p.add_argument("--data", help="corpus folder (default: the one recorded in the checkpoint)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    if json:
        p.add_argument("--json", action="store_true", help="print the results as one JSON object on the last line")
    return p


def tool_args(parser, argv, rules):
    """Numeric flags are checked by ``config.RULES`` before any work."""
    args = parser.parse_args(argv)
    check_flags(vars(args), {"device": "device", **rules})
    return args


def open_checkpoint(args):
    """The checkpoint (a best model unless --allow_resume_point), its corpus and its model on --device."""
    blob = load_checkpoint(args.save)
    if blob["kind"] == "resume" and not args.allow_resume_point:
        best = str(args.save)[:-9] + "pt" if str(args.save).endswith(".resume.pt") else blob["config"].get("save")
        raise UserError(f"{args.save} is a resume point (the last epoch's raw weights, not the run's best model): "
                        f"pass --save {best}, or --allow_resume_point to read the resume point anyway")
    device, corpus = get_device(args.device), Corpus(args.data or blob["config"]["data"])
    check_vocab(blob, corpus.dictionary, f"checkpoint {args.save}", corpus.path)
    return blob, corpus, model_from_checkpoint(blob, device), device


def rng_state():
    """Every RNG the training loop draws from, in a weights_only-loadable form."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
