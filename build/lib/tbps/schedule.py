"""Learning-rate schedule of the recipe (spec §7): per-iteration linear warm-up, then cosine."""

from __future__ import annotations

import math


def learning_rate(step: int, *, steps_per_epoch: int, epochs: int, peak: float, warmup_start: float,
                  warmup_epochs: float, final: float) -> float:
    """lr at global iteration ``step`` (0-based).

    Warm-up over W = warmup_epochs·E iterations from ``warmup_start`` to ``peak``, both end points
    included (so the peak is reached at t = W−1 and t = W); then cosine from ``peak`` to ``final``
    over the remaining T − W iterations, T = epochs·E.
    """
    total = epochs * steps_per_epoch
    warmup = int(round(warmup_epochs * steps_per_epoch))
    if step < warmup:
        if warmup == 1:
            return peak
        return warmup_start + (peak - warmup_start) * step / (warmup - 1)
    span = max(1, total - warmup)
    u = min(step - warmup, span)
    return final + 0.5 * (peak - final) * (1 + math.cos(math.pi * u / span))
