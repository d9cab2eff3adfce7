"""``graphprune search``: find the best pruning of a model over a space of configurations,
on a local process pool or Ray, resumable from an SQLite store (issue 14).

space.py: configurations and the order they are proposed in; store.py: the SQLite store;
trial.py: one trial; executors.py: local and Ray; front.py: the Pareto front; run.py: the
loop; report.py: the front table and OUTDIR.
"""

from .run import SearchResult, search

__all__ = ["SearchResult", "search"]
