"""``focalsam compare``: the comparison table of several optimizers over seeds.

Each (optimizer, seed) pair is an ordinary ``focalsam train`` run in the compare's
folder; the table gives mean ± std over seeds and marks differences within noise
(:data:`focalsam.compare.table.NOISE_RULE`).
"""

from focalsam.compare.run import run_compare, run_state, write_outputs
from focalsam.compare.spec import CompareError, CompareSpec, default_out
from focalsam.compare.table import NOISE_RULE, stat, summarize, terminal, within_noise

__all__ = [
    "NOISE_RULE",
    "CompareError",
    "CompareSpec",
    "default_out",
    "run_compare",
    "run_state",
    "stat",
    "summarize",
    "terminal",
    "within_noise",
    "write_outputs",
]
