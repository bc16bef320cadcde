"""Output-size arithmetic, receptive fields and the per-stage table, checked against
PyTorch's own layers, forward passes on the meta device, and gradients."""

import pytest
import torch
from torch import nn

from fcn_lesson import FCN8s, FCN16s, FCN32s, bilinear_upsample
from fcn_lesson.core.geometry import (
    conv_output_size,
    conv_transpose_output_size,
    meta_vgg16,
    stage_table,
    vgg16_score_size,
)


@pytest.mark.parametrize("size", [1, 5, 7, 8, 31, 32, 33])
@pytest.mark.parametrize("kernel,stride,padding,dilation", [
    (1, 1, 0, 1), (3, 1, 1, 1), (3, 2, 1, 1), (7, 1, 0, 1), (7, 1, 3, 1), (3, 2, 0, 2),
])
def test_conv_output_size_matches_conv2d(size, kernel, stride, padding, dilation):
    conv = nn.Conv2d(1, 1, kernel, stride, padding, dilation)
    span = size + 2 * padding - dilation * (kernel - 1)
    if span < 1:
        with pytest.raises(ValueError, match="smaller than the kernel"):
            conv_output_size(size, kernel, stride, padding, dilation)
        return
    expected = conv(torch.zeros(1, 1, size, size)).shape[-1]
    assert conv_output_size(size, kernel, stride, padding, dilation) == expected


@pytest.mark.parametrize("size", [2, 3, 7, 10, 11])
@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("kernel,stride,padding", [(2, 2, 0), (3, 2, 1), (3, 3, 1)])
def test_conv_output_size_matches_pooling(size, ceil_mode, kernel, stride, padding):
    pool = nn.MaxPool2d(kernel, stride, padding, ceil_mode=ceil_mode)
    expected = pool(torch.zeros(1, 1, size, size)).shape[-1]
    assert conv_output_size(size, kernel, stride, padding, ceil_mode=ceil_mode) == expected


@pytest.mark.parametrize("size", [1, 4, 9])
@pytest.mark.parametrize("kernel,stride,padding,output_padding", [
    (4, 2, 1, 0), (64, 32, 16, 0), (3, 2, 1, 1), (5, 3, 0, 2), (1, 1, 0, 0),
])
def test_conv_transpose_output_size_matches_layer(size, kernel, stride, padding, output_padding):
    layer = nn.ConvTranspose2d(1, 1, kernel, stride, padding, output_padding)
    expected = layer(torch.zeros(1, 1, size, size)).shape[-1]
    assert conv_transpose_output_size(size, kernel, stride, padding, output_padding) == expected


def test_size_arithmetic_rejects_bad_arguments():
    with pytest.raises(ValueError, match="kernel_size must be an int >= 1"):
        conv_output_size(5, 0)
    with pytest.raises(ValueError, match="size must be an int"):
        conv_output_size(2.5, 3)
    with pytest.raises(ValueError, match="crops away"):
        conv_transpose_output_size(1, 2, 1, padding=3)


@pytest.mark.parametrize("height,width,expected", [
    (224, 224, (1, 1)), (375, 500, (5, 9)), (500, 375, (9, 5)), (255, 256, (1, 2)),
    (288, 320, (3, 4)),
])
def test_vgg16_score_size(height, width, expected):
    assert vgg16_score_size(height, width) == expected
    # ... and what the convolutionalized VGG16 really returns (meta: shapes only)
    out = meta_vgg16(convolutional=True)(torch.empty(1, 3, height, width, device="meta"))
    assert tuple(out.shape) == (1, 1000, *expected)


def test_vgg16_score_size_fc6_padding_and_too_small():
    assert vgg16_score_size(375, 500, fc6_padding=3) == (11, 15)  # floor(n / 32)
    with pytest.raises(ValueError, match="at least 224 pixels"):
        vgg16_score_size(223, 500)


def _output_shapes(model, layers, x):
    shapes = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape[1:])))
             for m in layers]
    model(x)
    for h in hooks:
        h.remove()
    return shapes


@pytest.mark.parametrize("height,width", [(224, 224), (375, 500), (613, 257)])
def test_vgg_tables_match_forward_shapes(height, width):
    x = torch.empty(1, 3, height, width, device="meta")
    vgg, conv = meta_vgg16(), meta_vgg16(convolutional=True)
    pools = [m for m in vgg.features if isinstance(m, nn.MaxPool2d)]
    linears = [m for m in vgg.classifier if isinstance(m, nn.Linear)]
    expected = _output_shapes(vgg, [*pools, vgg.avgpool, *linears], x)
    assert [r.shape for r in stage_table(vgg, height, width)[1:]] == expected
    pools = [m for m in conv.features if isinstance(m, nn.MaxPool2d)]
    expected = _output_shapes(conv, [*pools, conv.fc6, conv.fc7, conv.fc8], x)
    assert [r.shape for r in stage_table(conv, height, width)[1:]] == expected


def test_vgg_tables_at_375x500():
    plain = {r.name: r for r in stage_table(meta_vgg16(), 375, 500)}
    conv = {r.name: r for r in stage_table(meta_vgg16(convolutional=True), 375, 500)}
    assert plain["pool5"].shape == conv["pool5"].shape == (512, 11, 15)
    # torchvision squashes pool5 to 7x7, and its Linear layers throw position away:
    assert plain["avgpool"].shape == (512, 7, 7) and plain["avgpool"].stride is None
    assert plain["fc8"] == ("fc8", (1000,), None, None, None)
    # convolutionalized: a 5x9 map at stride 32, each cell centred on its 224-px window
    assert conv["fc8"] == ("fc8", (1000, 5, 9), 32, 404, 111.5)
    assert [conv[f"pool{i}"].receptive_field for i in range(1, 6)] == [6, 16, 44, 100, 212]


def test_vgg_table_at_224_keeps_geometry_through_avgpool():
    rows = {r.name: r for r in stage_table(meta_vgg16(), 224, 224)}
    assert rows["avgpool"] == ("avgpool", (512, 7, 7), 32, 212, 15.5)  # identity at 224


def test_boxes_of_the_convolutionalized_vgg():
    fc8 = stage_table(meta_vgg16(convolutional=True), 375, 500)[-1]
    for i, j in [(0, 0), (2, 4), (4, 8)]:
        # the classifier reads pool5 rows i..i+6, i.e. pixels 32 i .. 32 i + 223
        assert fc8.box(i, j, 224) == (32 * i, 32 * j, 32 * i + 224, 32 * j + 224)
        assert fc8.box(i, j) == (32 * i - 90, 32 * j - 90, 32 * i + 314, 32 * j + 314)
    with pytest.raises(ValueError, match="outside the 5x9 map"):
        fc8.box(5, 0)
    linear = stage_table(meta_vgg16(), 375, 500)[-1]
    with pytest.raises(ValueError, match="not a spatial map"):
        linear.box(0, 0)


def _meta(cls, **kwargs):
    with torch.device("meta"):
        return cls(num_classes=21, **kwargs)


@pytest.mark.parametrize("cls", [FCN32s, FCN16s, FCN8s])
@pytest.mark.parametrize("height,width", [(375, 500), (1, 1), (64, 33)])
def test_fcn_table_matches_forward_maps(cls, height, width):
    model = _meta(cls, width=0.25)
    rows = {r.name: r for r in stage_table(model, height, width)}
    maps = model.forward_maps(torch.empty(1, 3, height, width, device="meta"))
    for name, value in maps.items():
        assert rows[name].shape == tuple(value.shape[1:]), name
    features = model.backbone(torch.empty(1, 3, *rows["padded input"].shape[1:], device="meta"))
    assert rows["pool3"].shape == tuple(features["pool3"].shape[1:])
    assert rows["fc7"].shape == tuple(features["fc7"].shape[1:])


@pytest.mark.parametrize("cls", [FCN32s, FCN16s, FCN8s])
def test_fcn_maps_line_up_with_the_image(cls):
    rows = {r.name: r for r in stage_table(_meta(cls), 375, 500)}
    assert rows["padded input"].shape == (3, 384, 512)
    assert rows["score_fr"][2:] == (32, 404, 15.5)  # fc6 padding 3: centred like pool5
    for stride, name in ((16, "fuse_pool4"), (8, "fuse_pool3")):
        if name in rows:  # fused maps: both inputs centred on the same pixels (checked)
            assert rows[name].stride == stride and rows[name].center == stride / 2 - 0.5
    out = rows["out"]
    assert out.shape == (21, 375, 500) and out.stride == 1 and out.center == 0.0
    assert out.receptive_field == {FCN32s: 436, FCN16s: 452, FCN8s: 460}[cls]


def test_fcn_table_refuses_misaligned_fusion():
    model = _meta(FCN16s)
    model.upscore2 = nn.ConvTranspose2d(21, 21, 4, stride=2)  # no padding: 2 cells too big
    with pytest.raises(ValueError, match="do not line up"):
        stage_table(model, 375, 500)


@torch.no_grad()
def test_transposed_conv_centre_rule():
    # One score at cell (2, 3) of a stride-32 map centred at 15.5, upsampled x32: the tent
    # it becomes is centred where the table says the cell is, in output pixels.
    rows = {r.name: r for r in stage_table(_meta(FCN32s), 160, 192)}
    assert rows["upscore_final"].center == 0.0 and rows["score_fr"].center == 15.5
    score = torch.zeros(1, 1, 5, 6, dtype=torch.float64)
    score[0, 0, 2, 3] = 1.0
    up = bilinear_upsample(score, 32)[0, 0]
    pixels = torch.arange(up.shape[0], dtype=torch.float64)
    assert (up.sum(1) * pixels).sum() / up.sum() == 15.5 + 32 * 2
    pixels = torch.arange(up.shape[1], dtype=torch.float64)
    assert (up.sum(0) * pixels).sum() / up.sum() == 15.5 + 32 * 3


@pytest.fixture(scope="module")
def positive_avgpool_fcn():
    """A tiny FCN with VGG16's geometry, average pooling and positive weights, run once on a
    448x448 input. Then every pixel a cell can depend on gets a nonzero gradient, so the
    gradient's support is the receptive field (max pooling would route the gradient to one
    pixel per window)."""
    model = FCN32s(num_classes=1, width=1 / 64, dropout=0.0).double()
    for stage in (model.backbone.to_pool3, model.backbone.to_pool4, model.backbone.to_pool5):
        for parent in stage.modules():
            for name, child in parent.named_children():
                if isinstance(child, nn.MaxPool2d):
                    setattr(parent, name, nn.AvgPool2d(2, 2))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.fill_(1.0 / m.weight[0].numel())
                m.bias.zero_()
    x = torch.ones(1, 3, 448, 448, dtype=torch.float64, requires_grad=True)
    features = model.backbone(x)
    features["pool5"] = model.backbone.to_pool5(features["pool4"])
    return model.eval(), x, features


def _support(grad: torch.Tensor) -> tuple[int, int, int, int]:
    rows = grad.abs().sum(dim=1).nonzero()
    cols = grad.abs().sum(dim=0).nonzero()
    return rows.min().item(), cols.min().item(), rows.max().item() + 1, cols.max().item() + 1


@pytest.mark.parametrize("name,cell", [("pool5", (7, 7)), ("pool5", (0, 1)), ("pool3", (20, 3)),
                                       ("fc7", (7, 7)), ("fc7", (13, 0))])
def test_receptive_field_is_the_gradient_support(positive_avgpool_fcn, name, cell):
    model, x, features = positive_avgpool_fcn
    size = x.shape[-1]
    (grad,) = torch.autograd.grad(features[name][0, :, cell[0], cell[1]].sum(), x,
                                  retain_graph=True)
    top, left, bottom, right = {r.name: r for r in stage_table(model, size, size)}[name].box(*cell)
    clipped = (max(top, 0), max(left, 0), min(bottom, size), min(right, size))
    assert _support(grad[0].sum(0)) == clipped


def test_stage_table_errors():
    with pytest.raises(TypeError, match="expects an FCN, a torchvision VGG"):
        stage_table(nn.Linear(3, 3), 224, 224)
    vgg = meta_vgg16()
    vgg.avgpool = nn.Identity()  # without the squashing pool, fc6 gets the wrong size
    with pytest.raises(ValueError, match="25088 inputs, but it receives"):
        stage_table(vgg, 375, 500)
    with pytest.raises(ValueError, match="height must be an int >= 1"):
        stage_table(meta_vgg16(), 0, 224)
    with pytest.raises(ValueError, match="fc6: input of size 2"):
        stage_table(meta_vgg16(convolutional=True), 64, 64)  # 2x2 pool5 < 7x7 fc6
