"""Reading and summarizing results, torch-free: per-epoch metrics, mean and spread, optional plots, shared by
the table report, the study report and plot.py so that a damaged file or a missing matplotlib reads the same."""
import json
import math
import statistics
import sys
from pathlib import Path

from runfiles import UserError, atomic_write


def read_metrics(path, keys=("epoch", "valid_ppl")):
    """The epoch rows of a ``.metrics.jsonl``; every problem is one UserError naming the file (and line)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a metrics file: name a run's NAME.metrics.jsonl or checkpoint")
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise UserError(f"no metrics at {path}: name a run's checkpoint or its .metrics.jsonl") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a text file (not UTF-8): name a .metrics.jsonl written by main.py") from None
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror or e}): check its permissions") from None
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise UserError(f"{path} line {number} is not JSON (a truncated or damaged file): rerun or restore "
                            f"the run's metrics") from None
        if bad := [k for k in keys if not isinstance(row, dict) or not _number(row.get(k))]:
            raise UserError(f"{path} line {number}: {bad[0]} is missing or not a number: name a metrics file "
                            f"written by main.py or finetune.py")
        rows.append(row)
    return rows


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def mean_sd(values):
    """Mean and sample standard deviation: (None, None) for no values, sd None for one."""
    values = list(values)
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else None)


def mean_sd_text(values, digits=2):
    mean, sd = mean_sd(values)
    return "-" if mean is None else f"{mean:.{digits}f}" + ("" if sd is None else f" ± {sd:.{digits}f}")


def pyplot(required=False):
    """matplotlib's pyplot, or (it is optional) None with one line said once; ``required``: a UserError."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        if required:
            raise UserError("matplotlib is not installed, and plotting needs it: pip install matplotlib") from None
        if not getattr(pyplot, "said", False):
            print("matplotlib is not installed, so no plots were drawn: pip install matplotlib", file=sys.stderr)
            pyplot.said = True
        return None


def draw_curve(ax, rows, key, label=None, offset=0, **style):
    """One run's ``key`` per epoch (shifted by ``offset``: a fine-tuning follows its training); one epoch: a point."""
    from matplotlib.ticker import MaxNLocator
    marker = "o" if len(rows) == 1 else ("." if len(rows) < 30 else None)
    ax.plot([row["epoch"] + offset for row in rows], [row[key] for row in rows], marker=marker, label=label, **style)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")


def save_figure(fig, path, dpi=110):
    path = Path(path)
    try:
        atomic_write(path, lambda f: fig.savefig(f, format=path.suffix[1:] or None, dpi=dpi, bbox_inches="tight"))
    except OSError as e:
        raise UserError(f"cannot write {path} ({e.strerror or e}): choose a writable folder for it") from None
    finally:
        pyplot().close(fig)
