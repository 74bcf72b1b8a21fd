"""statprune: prune trained transformers without fine-tuning (STAT and baselines).

The import package is ``statprune`` because ``stat`` is a frozen standard-library module;
the STAT core lives in :mod:`statprune.stat`.
"""

__version__ = "0.1.0"
