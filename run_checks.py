"""What a run checks before it touches any file: its resume point, its output names, an earlier run's files."""
import os

from checkpoint import load_checkpoint
from runfiles import RUN_FILES, UserError, check_output_path, run_paths


def load_resume(path, tool):
    """A resume point, or one line saying what to run where there is none at ``path``."""
    path = str(path)
    if os.path.isfile(path):
        return load_checkpoint(path, "resume")
    best = path[:-len(".resume.pt")] + ".pt" if path.endswith(".resume.pt") else "runs/NAME.pt"
    if os.path.isfile(best):
        hint = f"its run's best model is there: evaluate it with python evaluate.py --save {best}"
    elif tool == "main.py":
        hint = f"start the run with python main.py --save {best}"
    else:
        hint = f"start the fine-tuning with python finetune.py --save TRAINED.pt --out {best}"
    raise UserError(f"no resume point at {path} (a run writes NAME.resume.pt beside its best model NAME.pt): check "
                    f"the path, or {hint}")


def check_run_paths(cfg, paths, flag, source):
    """Every file the run will write can be written, and none is a file of another run's set."""
    best, reserved = str(paths["best"]), [f".{suffix}" for suffix in RUN_FILES.values()]
    for what, suffix in RUN_FILES.items():
        if best.endswith(f".{suffix}"):
            raise UserError(f"{flag} {best} ends in .{suffix}, the name of another run's {what} file: choose a "
                            f"name that ends in none of {', '.join(reserved)}")
    if source is not None and cfg.get("finetuned_from"):
        theirs = {os.path.realpath(p) for p in run_paths(cfg["finetuned_from"]).values()}
        shared = [p for p in paths.values() if os.path.realpath(p) in theirs]
        if shared:
            raise UserError(f"{flag} {best} would write {shared[0]}, a file of the input's own run: fine-tuning never "
                            f"touches its input's files, choose another {flag}")
    check_output_path(paths["best"], flag, siblings=[p for k, p in paths.items() if k != "best"])


def earlier_run_files(paths, overwrite):
    """An earlier run's files here: refused, or returned for removal, so a later --resume never mixes two runs."""
    existing = [p for k, p in paths.items() if k != "lock" and os.path.exists(p)]
    if existing and not overwrite:
        hint = (f"continue that run with --resume {paths['resume']}, " if os.path.exists(paths["resume"])
                else "its run left no resume file; ")
        raise UserError(f"{existing[0]} already exists: {hint}choose another output path, or pass --overwrite")
    return existing


def check_own_files(paths, resume):
    """A resume point continues only its own run's files: the best model beside it must carry its run id."""
    own = resume.get("run")
    if own is not None and os.path.exists(paths["best"]):
        theirs = load_checkpoint(paths["best"], "best").get("run")
        if theirs != own:
            raise UserError(f"{paths['best']} was written by another run than the one {paths['resume']} continues "
                            f"(run {theirs or 'without an id'}, not {own}): move one of them away; a resume point "
                            f"never continues another run's files")
