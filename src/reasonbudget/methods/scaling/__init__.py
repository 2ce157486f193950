"""Inference-time scaling: turn N samples or particles into accuracy (the `--budgets` value is N)."""

from reasonbudget.methods.scaling import (beam_search, best_of_n, dvts, parallel_tempering,  # noqa: F401
                                          particle_filter, particle_gibbs)
