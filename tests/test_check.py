"""Tolerance arithmetic of the output comparison: exact integer budgets of mismatched elements."""
import pytest
import torch

from avo.harness.check import compare
from avo.schema import EvaluationStatus, Tolerance

S = EvaluationStatus


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_exact_task_passes_on_sizes_where_one_over_n_rounds(device):
    # 512 x 128256: n * (1/n) == 0.9999999999999999 in float64, which CUDA's mean produced and
    # which failed an exact (matched_ratio 1.0) bitmask workload with zero bad elements.
    n = 512 * 128256
    assert n * (1.0 / n) != 1.0
    out = torch.full((512, 128256), float("-inf"))
    out[:, ::3] = 1.5
    res = compare("logits", out, out.clone(), torch.float32, Tolerance(atol=0, rtol=0, matched_ratio=1.0), device=device)
    assert res.status == S.PASSED, res.detail


def test_matched_ratio_budget_is_exact_at_the_boundary():
    ref = torch.zeros(1000)
    tol = Tolerance(atol=0.0, rtol=0.0, matched_ratio=0.99)  # 10 bad elements allowed
    out = ref.clone()
    out[:10] = 1.0
    assert compare("o", out, ref, torch.float32, tol).status == S.PASSED
    out[10] = 1.0
    res = compare("o", out, ref, torch.float32, tol)
    assert res.status == S.INCORRECT_NUMERICAL
    assert "11 of 1000 elements" in res.detail and "first at [0]" in res.detail


def test_infinities_must_match_and_nan_is_unwritten():
    ref = torch.tensor([1.0, float("-inf"), 2.0])
    tol = Tolerance(atol=1e-3, rtol=0.0)
    assert compare("o", ref.clone(), ref, torch.float32, tol).status == S.PASSED
    wrong_inf = torch.tensor([1.0, 0.0, 2.0])
    assert compare("o", wrong_inf, ref, torch.float32, tol).status == S.INCORRECT_NUMERICAL
    unwritten = torch.tensor([1.0, float("-inf"), float("nan")])
    res = compare("o", unwritten, ref, torch.float32, tol)
    assert res.status == S.INCORRECT_NUMERICAL and "unwritten" in res.detail
