import pytest
import torch
from torch import nn
from torchvision.models import vgg16

from fcn_lesson import convolutionalize, fc_to_conv


def test_fc_to_conv_equals_linear():
    torch.manual_seed(0)
    linear = nn.Linear(16 * 7 * 7, 10)
    conv = fc_to_conv(linear, 16, 7)
    x = torch.randn(4, 16, 7, 7)
    out = conv(x)
    assert out.shape == (4, 10, 1, 1)
    torch.testing.assert_close(out.flatten(1), linear(x.flatten(1)), atol=1e-5, rtol=1e-5)


def test_fc_to_conv_slides_over_larger_input():
    torch.manual_seed(0)
    linear = nn.Linear(8 * 3 * 3, 5)
    conv = fc_to_conv(linear, 8, 3)
    x = torch.randn(1, 8, 6, 9)
    out = conv(x)
    assert out.shape == (1, 5, 4, 7)
    for i in range(4):
        for j in range(7):
            window = x[:, :, i:i + 3, j:j + 3].flatten(1)
            torch.testing.assert_close(out[:, :, i, j], linear(window), atol=1e-5, rtol=1e-5)


def test_fc_to_conv_rejects_wrong_sizes():
    with pytest.raises(ValueError, match="25088 inputs"):
        fc_to_conv(nn.Linear(25088, 8), 512, 6)
    with pytest.raises(TypeError, match="nn.Linear"):
        fc_to_conv(nn.Conv2d(3, 3, 1), 3, 1)


@pytest.fixture(scope="module")
def vgg_pair():
    torch.manual_seed(0)
    vgg = vgg16().eval()  # random weights: the equalities hold for any weights
    return vgg, convolutionalize(vgg).eval()


@torch.no_grad()
def test_convolutionalize_equals_classifier_at_224(vgg_pair):
    vgg, fcn = vgg_pair
    x = torch.randn(2, 3, 224, 224)
    out = fcn(x)
    assert out.shape == (2, 1000, 1, 1)
    torch.testing.assert_close(out.flatten(1), vgg(x), atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_each_position_is_the_classifier_on_one_pool5_window(vgg_pair):
    vgg, fcn = vgg_pair
    x = torch.randn(1, 3, 288, 320)
    out = fcn(x)
    assert out.shape == (1, 1000, 288 // 32 - 6, 320 // 32 - 6)  # (3, 4)
    pool5 = vgg.features(x)  # (1, 512, 9, 10)
    for i in range(out.shape[2]):
        for j in range(out.shape[3]):
            window = pool5[:, :, i:i + 7, j:j + 7]
            expected = vgg.classifier(window.flatten(1))
            torch.testing.assert_close(out[:, :, i, j], expected, atol=1e-4, rtol=1e-4)


def test_convolutionalize_rejects_non_vgg():
    with pytest.raises(TypeError, match="torchvision VGG"):
        convolutionalize(nn.Linear(3, 3))


def test_fc_to_conv_copies_by_default_and_shares_when_asked():
    torch.manual_seed(0)
    linear = nn.Linear(4 * 3 * 3, 5)
    copied, shared = fc_to_conv(linear, 4, 3), fc_to_conv(linear, 4, 3, share_weights=True)
    assert shared.weight.untyped_storage().data_ptr() == linear.weight.untyped_storage().data_ptr()
    assert shared.bias is linear.bias
    assert copied.weight.untyped_storage().data_ptr() != linear.weight.untyped_storage().data_ptr()
    x = torch.randn(2, 4, 3, 3)
    with torch.no_grad():
        torch.testing.assert_close(shared(x), copied(x))
        linear.weight.mul_(2)  # one network trained: the shared one follows, the copy does not
    torch.testing.assert_close(shared.weight.flatten(1), linear.weight)
    assert not torch.equal(copied.weight.flatten(1), linear.weight)
    shared.weight.grad = torch.ones_like(shared.weight)
    torch.optim.SGD(shared.parameters(), lr=0.5).step()  # and the other way round
    torch.testing.assert_close(linear.weight, shared.weight.detach().flatten(1))


@torch.no_grad()
def test_convolutionalize_sharing_weights_computes_the_same(vgg_pair):
    vgg, fcn = vgg_pair
    shared = convolutionalize(vgg, share_weights=True).eval()
    assert shared.features is vgg.features
    fc6 = vgg.classifier[0].weight
    assert shared.fc6.weight.untyped_storage().data_ptr() == fc6.untyped_storage().data_ptr()
    x = torch.randn(1, 3, 256, 288)
    torch.testing.assert_close(shared(x), fcn(x))
