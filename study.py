"""The CPU-scale ablation study, declared once: its scale, its runs' axes and where it lives.

ablation.py trains the runs and study_report.py writes their tables; both read these declarations, and
the report never depends on the runner.
"""
from pathlib import Path

from config import MASK_SITES, default_kappa

DEFAULT_OUT = Path("results/ablation")
# The study's scale: the committed study's, and --quick's (ablation.py's flags of the same names).
DEFAULTS = dict(emsize=200, nhid=200, epochs=30, train_fraction=0.1, batch_size=20, bptt=35)
QUICK = dict(emsize=32, nhid=32, epochs=2, train_fraction=0.02, batch_size=20, bptt=35)
ALL_VARIANTS = ["baseline", "FD", "ELD", "PM", "RD"]
KAPPAS = [0.0, 0.05, 0.15, 0.5, 1.5]
FULL_SEEDS = [321, 322, 323, 324]
OTHER_SEEDS = [321, 322, 323]
# Every mask site of the single-layer model (it has no between-layer site h), named as main.py names it.
SITE_NAMES = {site: what for site, what in MASK_SITES.items() if site != "h"}
STUDY_SITES = "".join(SITE_NAMES)


def variant_kappa(variant):
    """What main.py gives the single-layer preset without --kappa."""
    return default_kappa("single", variant)
