import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fcn_lesson import BilinearUpsample, bilinear_kernel, bilinear_upsample


def upsample_filt(size):
    """The FCN reference implementation (surgery.py), verbatim in numpy."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = np.ogrid[:size, :size]
    return (1 - abs(og[0] - center) / factor) * (1 - abs(og[1] - center) / factor)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 7, 8, 16, 32, 64])
def test_bilinear_kernel_matches_reference(k):
    np.testing.assert_allclose(bilinear_kernel(k).numpy(), upsample_filt(k), atol=1e-7)


def test_bilinear_kernel_hand_values():
    assert torch.allclose(bilinear_kernel(4)[0], torch.tensor([0.25, 0.75, 0.75, 0.25]) * 0.25)
    assert torch.allclose(bilinear_kernel(3)[1], torch.tensor([0.5, 1.0, 0.5]))


@pytest.mark.parametrize("factor", [2, 4, 8, 16, 32])
def test_transposed_conv_equals_interpolate_away_from_border(factor):
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    ours = bilinear_upsample(x, factor)
    ref = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    assert ours.shape == ref.shape == (2, 3, 5 * factor, 7 * factor)
    b = factor // 2  # output pixels whose two nearest input samples both exist
    inner = (..., slice(b, -b), slice(b, -b))
    torch.testing.assert_close(ours[inner], ref[inner], atol=1e-12, rtol=0)
    # At the border the transposed conv sees zeros beyond the edge, interpolate clamps:
    assert (ours - ref).abs().amax() > 0.01


@pytest.mark.parametrize("learnable", [False, True])
def test_module_matches_functional(learnable):
    up = BilinearUpsample(4, 8, learnable=learnable)
    x = torch.randn(1, 4, 3, 6)
    torch.testing.assert_close(up(x), bilinear_upsample(x, 8))
    assert (sum(p.numel() for p in up.parameters()) > 0) == learnable


def test_learnable_weight_is_diagonal_bilinear():
    up = BilinearUpsample(3, 2, learnable=True)
    w = up.weight.detach()
    assert torch.equal(w[0, 0], bilinear_kernel(4))
    assert w[0, 1].abs().sum() == 0 and w[2, 1].abs().sum() == 0


@pytest.mark.parametrize("factor", [0, 1, 3, 2.0])
def test_bad_factor(factor):
    with pytest.raises(ValueError, match="even int"):
        BilinearUpsample(3, factor)


def test_bad_kernel_size():
    with pytest.raises(ValueError, match="kernel_size"):
        bilinear_kernel(0)
