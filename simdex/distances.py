"""Metrics and their direction, declared once. Light: the clients use it for padding."""
from __future__ import annotations

# metric -> True when a bigger score is a better match
BIGGER_IS_BETTER = {"l2": False, "ip": True, "cosine": True}


def worst(metric: str) -> float:
    """The padding score for a missing hit: +inf for distances, -inf for similarities."""
    return float("-inf") if BIGGER_IS_BETTER[metric] else float("inf")
