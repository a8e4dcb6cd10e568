import pytest
import torch
import torch.nn as nn

from utils import MODELS, count_params, receptive_field
from utils.models import conv_block, gap_head, transition

# Exact counts: a change to any model must be a deliberate change here too.
EXPECTED_PARAMS = {"skeleton": 15042, "lighter": 8870, "regularized": 7624, "final": 7624}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_shape_and_log_probabilities(name):
    model = MODELS[name]().eval()
    out = model(torch.randn(5, 1, 28, 28))
    assert out.shape == (5, 10)
    assert torch.allclose(out.exp().sum(1), torch.ones(5), atol=1e-5)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_exact_parameter_count(name):
    assert count_params(MODELS[name]()) == EXPECTED_PARAMS[name]


def test_series_budgets():
    assert EXPECTED_PARAMS["lighter"] < 10_000
    assert EXPECTED_PARAMS["regularized"] < 8_000
    assert EXPECTED_PARAMS["final"] <= EXPECTED_PARAMS["regularized"]


def test_blocks():
    block = conv_block(4, 6, padding=1, dropout=0.1)
    assert [type(m) for m in block] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Dropout]
    assert block[0].bias is None  # BN makes it redundant
    assert block(torch.randn(2, 4, 10, 10)).shape == (2, 6, 10, 10)
    assert transition(6, 3)(torch.randn(2, 6, 10, 10)).shape == (2, 3, 5, 5)
    assert gap_head(6)(torch.randn(2, 6, 5, 5)).shape == (2, 10)


def test_receptive_field_against_hand_computed_stack():
    stack = nn.Sequential(
        nn.Conv2d(1, 2, 3),                          # 28->26  j1 rf3
        nn.Conv2d(2, 2, 3, padding=1),               # 26->26  j1 rf5
        nn.MaxPool2d(2),                             # 26->13  j2 rf6
        nn.Conv2d(2, 2, 3, stride=2, padding=1),     # 13->7   j4 rf10
        nn.Conv2d(2, 2, 3, padding=2, dilation=2),   # 7->7    j4 rf26
        nn.AdaptiveAvgPool2d(1),                     # 7->1    j28 rf50
    )
    rows = receptive_field(stack)
    sizes = [(r["size_in"], r["size_out"]) for r in rows]
    assert sizes == [(28, 26), (26, 26), (26, 13), (13, 7), (7, 7), (7, 1)]
    assert [r["jump_out"] for r in rows] == [1, 1, 2, 4, 4, 28]
    assert [r["rf_out"] for r in rows] == [3, 5, 6, 10, 26, 50]


@pytest.mark.parametrize("name", ["regularized", "final"])
def test_gap_models_see_the_whole_digit_before_pooling(name):
    rows = receptive_field(MODELS[name]())
    before_gap = [r for r in rows if r["type"] == "Conv2d" and r["size_out"] > 1][-1]
    assert before_gap["rf_out"] >= 22


def test_final_net_widths():
    assert count_params(MODELS["final"](widths=(8, 12, 8, 12, 12, 12, 12))) == 6040
    with pytest.raises(ValueError, match="7 positive channel counts"):
        MODELS["final"](widths=(8, 12))
