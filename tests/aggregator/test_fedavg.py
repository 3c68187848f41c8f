from __future__ import annotations

import numpy as np
import pytest

from fedmq.aggregator.fedavg import weighted_average


def test_weighted_average():
    out = weighted_average([np.array([1.0, 0.0]), np.array([0.0, 3.0])], [1, 3])
    np.testing.assert_allclose(out, [0.25, 2.25])


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        weighted_average([], [])
    with pytest.raises(ValueError):
        weighted_average([np.zeros(2)], [0])
