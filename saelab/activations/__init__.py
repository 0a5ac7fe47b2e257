"""Activations: collecting one row per token from a model's hooks, and holding those rows with where
each came from.

Modules, lowest first: `stores` (rows in memory or in an unlinked file on disk), `rows` (the
`Activations` container and the row readers every consumer uses), `collect`
(`collect_activations`: batched forward passes, long texts split into context-sized windows).
"""
from saelab.activations.collect import TruncationWarning, collect_activations
from saelab.activations.rows import Activations

__all__ = ["Activations", "collect_activations", "TruncationWarning"]
