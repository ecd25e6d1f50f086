import math

import pytest

from tbps.schedule import learning_rate


def lr(t, e=212):
    return learning_rate(t, steps_per_epoch=e, epochs=5, peak=1e-4, warmup_start=1e-6, warmup_epochs=1, final=5e-6)


def test_warmup_end_points_included():
    assert lr(0) == pytest.approx(1e-6)
    assert lr(211) == pytest.approx(1e-4)  # t = W-1
    assert lr(212) == pytest.approx(1e-4)  # t = W, start of the cosine
    assert lr(106) == pytest.approx(1e-6 + (1e-4 - 1e-6) * 106 / 211)


def test_cosine_tail_matches_spec_cuhk():
    # docs/method.md#lr-schedule: for CUHK (E = 212) the last value is 5.0003e-6
    assert lr(5 * 212 - 1) == pytest.approx(5.0003e-6, rel=1e-4)
    u, big_u = 500, 4 * 212
    assert lr(212 + u) == pytest.approx(5e-6 + 0.5 * (1e-4 - 5e-6) * (1 + math.cos(math.pi * u / big_u)))


def test_monotone_after_warmup():
    values = [lr(t) for t in range(212, 5 * 212)]
    assert all(a >= b for a, b in zip(values, values[1:]))
