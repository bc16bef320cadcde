"""The deliberately naive textbook forward pass fails exactly as the lesson says it does."""

import pytest
import torch
from support import scored_classroom_model as _model

from fcn_lesson.lessons.textbook import naive_fcn32s_output_size, naive_forward


def test_output_size_is_32_floor_n_over_32():
    assert naive_fcn32s_output_size(375, 500) == (352, 480)
    assert naive_fcn32s_output_size(128, 32) == (128, 32)
    assert naive_fcn32s_output_size(63, 95) == (32, 64)
    with pytest.raises(ValueError, match="height 31 < 32"):
        naive_fcn32s_output_size(31, 64)
    with pytest.raises(ValueError, match="width must be an int"):
        naive_fcn32s_output_size(64, 64.0)


@pytest.mark.parametrize("size", [(375, 500), (64, 100), (97, 33)])
def test_naive_fcn32s_silently_loses_the_border(size):
    model = _model("fcn32s")
    x = torch.rand(1, 3, *size)
    assert naive_forward(model, x).shape[-2:] == naive_fcn32s_output_size(*size)
    assert model(x).shape[-2:] == size  # the real model covers every pixel


def test_naive_fusion_crashes_when_pool4_has_an_extra_row():
    # 375 = 11 x 32 + 23: pool4 has 23 rows, upscore2 22; 500 = 15 x 32 + 20: 31 vs 30 columns
    for variant in ("fcn16s", "fcn8s"):
        with pytest.raises(RuntimeError, match=r"\(22\) must match .* \(23\) at non-singleton dimension 2"):
            naive_forward(_model(variant), torch.rand(1, 3, 375, 384))
        with pytest.raises(RuntimeError, match=r"\(30\) must match .* \(31\) at non-singleton dimension 3"):
            naive_forward(_model(variant), torch.rand(1, 3, 375, 500))
    # FCN-8s also fails at pool3 alone: 360 = 11 x 32 + 8, pool3 45 rows vs 2 x 22
    with pytest.raises(RuntimeError, match=r"\(44\) must match .* \(45\)"):
        naive_forward(_model("fcn8s"), torch.rand(1, 3, 360, 360))
    assert naive_forward(_model("fcn16s"), torch.rand(1, 3, 360, 360)).shape[-2:] == (352, 352)


@pytest.mark.parametrize("variant", ["fcn32s", "fcn16s", "fcn8s"])
def test_on_multiples_of_32_the_naive_pass_is_the_model(variant):
    model = _model(variant)
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(naive_forward(model, x), model(x))
