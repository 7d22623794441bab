"""One PSI: the model server's drift windows and the operator's canary-vs-stable prediction
check compute the same per-bin terms with the same floor.

The operator's engine keeps its own copy (``decide.checks.psi_term``) rather than depend on
the server's statistics module (``services.binstats``, G-tests included); this test is
what ties the two together.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mlrollout.operator.decide import checks
from mlrollout.services import binstats

proportions = st.lists(st.floats(0.0, 1.0), min_size=1, max_size=12)


def test_the_floor_is_the_same() -> None:
    assert checks.PSI_FLOOR == binstats.PSI_FLOOR


@given(proportions, proportions)
def test_the_terms_are_the_same(a: list[float], e: list[float]) -> None:
    n = min(len(a), len(e))
    x, y = np.array(a[:n]), np.array(e[:n])
    assert np.allclose(checks.psi_term(x, y), binstats.psi_terms(x, y), rtol=0, atol=0)


def test_psi_is_the_sum_of_the_terms_of_the_proportions() -> None:
    expected, actual = np.array([30.0, 50.0, 20.0, 0.0]), np.array([10.0, 40.0, 40.0, 10.0])
    terms = checks.psi_term(actual / actual.sum(), expected / expected.sum())
    assert binstats.psi(expected, actual) == pytest.approx(float(terms.sum()))
