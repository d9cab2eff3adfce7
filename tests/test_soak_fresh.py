"""A small soak (``models/soak.py``) on seeds drawn fresh each run, beside the fixed examples
of ``test_random_graphs.py``: every CI run looks at models nobody has checked before.

The first seed is drawn from ``os.urandom`` unless the environment variable
``GRAPHPRUNE_SOAK_SEED`` is set (an integer: the first seed). The seeds are printed, and a
failure names each failing seed with the command that reproduces it, so
``GRAPHPRUNE_SOAK_SEED=S python -m pytest tests/test_soak_fresh.py`` reruns the same examples.
"""

from __future__ import annotations

import os

from models.random_graphs import DEFAULT_IDIOMS
from models.soak import run_one

EXAMPLES = 50
SEED_ENV = "GRAPHPRUNE_SOAK_SEED"
# The generator idioms drawn here: DEFAULT_IDIOMS (qdq joins them once exactness allows for
# requantization, see models/random_graphs.py).
IDIOMS = DEFAULT_IDIOMS


def first_seed() -> int:
    """``GRAPHPRUNE_SOAK_SEED`` if set, else a fresh seed from ``os.urandom``."""
    value = os.environ.get(SEED_ENV, "").strip()
    if value:
        return int(value)
    return int.from_bytes(os.urandom(4), "little") % 2**31


def test_fresh_random_models_prune_within_the_contract():
    start = first_seed()
    print(f"fresh soak: seeds {start}..{start + EXAMPLES - 1} ({SEED_ENV}={start})")
    failures = []
    for seed in range(start, start + EXAMPLES):
        _, settings, outcome = run_one(seed, idioms=IDIOMS, timeout=120)
        if outcome.failure is not None:
            failures.append(
                f"seed {seed} ({settings}): {outcome.failure}\n"
                f"  reproduce: python -m models.soak 1 --seed {seed} --idioms {','.join(IDIOMS) or 'none'} --verbose"
            )
    assert not failures, (
        f"{len(failures)} of {EXAMPLES} fresh examples failed (rerun all: {SEED_ENV}={start} python -m pytest"
        f" tests/test_soak_fresh.py):\n" + "\n".join(failures)
    )
