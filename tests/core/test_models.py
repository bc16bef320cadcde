import os
from urllib.error import URLError

import pytest
import torch
from torchvision.models import vgg16

from fcn_lesson import FCN8s, FCN16s, FCN32s, build_model
from fcn_lesson.core.models import pad_to_multiple

VARIANTS = [FCN32s, FCN16s, FCN8s]
# Sizes that are not multiples of 32 (and a few that are), incl. the textbook's 375x500.
ODD_SIZES = [(1, 1), (1, 37), (5, 3), (17, 31), (31, 31), (32, 32), (33, 33), (47, 65),
             (63, 97), (64, 64), (95, 33), (100, 150), (127, 129), (128, 96), (131, 97),
             (150, 150), (161, 33), (199, 201), (224, 224), (255, 17), (257, 63), (300, 7),
             (375, 500), (33, 511)]


@pytest.mark.parametrize("cls", VARIANTS)
@torch.no_grad()
def test_output_shape_equals_input_shape_for_odd_sizes(cls):
    torch.manual_seed(0)
    model = cls(num_classes=5, width=1 / 32).eval()
    for h, w in ODD_SIZES:
        assert model(torch.rand(2, 3, h, w)).shape == (2, 5, h, w), (h, w)


# Exact parameter counts at full VGG16 width, 21 classes (the paper's ~134M). The final
# bilinear upsampler is fixed (a buffer); the 2x upsamplers are learnable (21*21*4*4 each).
@pytest.mark.parametrize("cls, expected", [(FCN32s, 134_346_581), (FCN16s, 134_364_410),
                                           (FCN8s, 134_376_863)])
def test_parameter_counts_match_the_paper(cls, expected):
    with torch.device("meta"):
        model = cls(num_classes=21)
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize("cls", VARIANTS)
def test_a_learned_final_upsampling_starts_as_the_fixed_bilinear_one(cls):
    # The paper keeps the final upsampling fixed (Sec. 4.3); learned, it is a full
    # (classes x classes) kernel like upscore2's that starts bilinear, so it first computes
    # exactly what the fixed net does, and training only adds the C*C*(2s)^2 weights.
    torch.manual_seed(0)
    learned = cls(num_classes=5, width=1 / 32, learn_final_upsampling=True).eval()
    fixed = cls(num_classes=5, width=1 / 32).eval()
    for layer in (learned.score_fr, learned.last_score_layer):
        torch.nn.init.normal_(layer.weight, std=0.1)
    fixed.load_state_dict({**fixed.state_dict(), **{k: v for k, v in learned.state_dict().items()
                                                     if not k.startswith("upscore_final")}})
    x = torch.rand(2, 3, 47, 65)
    with torch.no_grad():
        torch.testing.assert_close(learned(x), fixed(x), rtol=0, atol=1e-6)
    extra = sum(p.numel() for p in learned.parameters()) - sum(p.numel() for p in fixed.parameters())
    assert extra == 5 * 5 * (2 * learned.output_stride) ** 2


def test_layer_names_follow_the_paper():
    names = dict(FCN8s(num_classes=3, width=1 / 32).named_modules())
    for name in ["backbone.to_pool3.0.conv1_1", "backbone.to_pool5.conv5_3", "backbone.head.fc6",
                 "backbone.head.fc7", "score_fr", "upscore2", "score_pool4", "upscore_pool4",
                 "score_pool3", "upscore_final"]:
        assert name in names, name
    assert FCN8s(3, 1 / 32).backbone.head.fc6.kernel_size == (7, 7)
    assert "score_pool4" not in dict(FCN32s(3, 1 / 32).named_modules())


def test_width_scales_channels():
    model = FCN16s(num_classes=4, width=0.25)
    assert model.backbone.head.fc6.out_channels == 1024
    assert model.backbone.head.fc6.in_channels == 128
    assert model.score_pool4.in_channels == 128


def test_score_layers_start_at_zero():
    model = FCN8s(num_classes=3, width=1 / 16).eval()
    for layer in (model.score_fr, model.score_pool4, model.score_pool3):
        assert layer.weight.abs().sum() == 0 and layer.bias.abs().sum() == 0
    assert model(torch.rand(1, 3, 40, 40)).abs().amax() == 0


def _stripe_detector(model, score_layer):
    """Hand-set weights: the network passes input channel 0 through identity 3x3/7x7/1x1
    convolutions and max pools, and `score_layer` scores class 1 = that feature and
    class 0 = 0.5. So a pooled cell says "class 1" iff its block touches the stripe."""
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for conv in model.backbone.conv_layers() + [model.backbone.head.fc6, model.backbone.head.fc7]:
            k = conv.kernel_size[0] // 2
            conv.weight[0, 0, k, k] = 1.0
        for up in ("upscore2", "upscore_pool4"):
            if hasattr(model, up):  # restore bilinear 2x after zeroing
                fresh = type(model)(model.num_classes, model.width)
                getattr(model, up).weight.copy_(getattr(fresh, up).weight)
        layer = getattr(model, score_layer)
        layer.weight[1, 0] = 1.0
        layer.bias[0] = 0.5
    return model.eval()


# (variant, skip that scores the stripe, stripe rows [top, bottom) aligned to that stride)
@pytest.mark.parametrize("cls, layer, rows", [
    (FCN32s, "score_fr", (64, 96)),
    (FCN16s, "score_fr", (32, 96)),
    (FCN16s, "score_pool4", (48, 64)),
    (FCN8s, "score_fr", (96, 128)),
    (FCN8s, "score_pool4", (80, 96)),
    (FCN8s, "score_pool3", (40, 48)),
])
@pytest.mark.parametrize("size", [(150, 170), (160, 192), (137, 61)])
@torch.no_grad()
def test_predictions_land_on_the_object(cls, layer, rows, size):
    """A horizontal stripe occupying exactly one block row of the scoring stage must be
    predicted exactly on its rows, across the whole width, for sizes off the 32 grid."""
    model = _stripe_detector(cls(num_classes=2, width=1 / 64, dropout=0.0), layer)
    x = torch.zeros(1, 3, *size)
    x[:, 0, rows[0]:rows[1]] = 1.0
    pred = model(x).argmax(1)[0]
    expected = torch.zeros(size, dtype=torch.long)
    expected[rows[0]:rows[1]] = 1
    assert torch.equal(pred, expected)


@torch.no_grad()
def test_forward_maps_names_sizes_and_consistency():
    torch.manual_seed(0)
    model = FCN8s(num_classes=3, width=1 / 16).eval()
    for p in (model.score_fr, model.score_pool4, model.score_pool3):
        torch.nn.init.normal_(p.weight)
    x = torch.rand(1, 3, 100, 70)  # padded to 128 x 96
    maps = model.forward_maps(x)
    assert maps["score_fr"].shape[-2:] == (4, 3)
    assert maps["score_pool4"].shape[-2:] == maps["upscore2"].shape[-2:] == (8, 6)
    assert maps["score_pool3"].shape[-2:] == maps["upscore_pool4"].shape[-2:] == (16, 12)
    torch.testing.assert_close(maps["fuse_pool4"], maps["upscore2"] + maps["score_pool4"])
    torch.testing.assert_close(maps["fuse_pool3"], maps["upscore_pool4"] + maps["score_pool3"])
    torch.testing.assert_close(maps["out"], model(x))
    # Re-fusing cached maps with a skip switched off equals a net whose skip is zero.
    refused = model.fuse({k: maps[k] for k in ("score_fr", "score_pool4", "score_pool3")},
                         None, 100, 70, pool3_gain=0.0)
    torch.nn.init.zeros_(model.score_pool3.weight)
    torch.nn.init.zeros_(model.score_pool3.bias)
    torch.testing.assert_close(refused["out"], model(x))


@torch.no_grad()
def test_stagewise_init_starts_from_the_coarser_prediction():
    torch.manual_seed(0)
    fcn32 = FCN32s(num_classes=4, width=1 / 16, dropout=0.0).eval()
    torch.nn.init.normal_(fcn32.score_fr.weight)
    fcn16 = FCN16s(num_classes=4, width=1 / 16, dropout=0.0).init_from(fcn32).eval()
    assert torch.equal(fcn16.backbone.head.fc6.weight, fcn32.backbone.head.fc6.weight)
    assert fcn16.score_pool4.weight.abs().sum() == 0
    x = torch.rand(2, 3, 128, 128)
    # Bilinear 2x then 16x is not exactly bilinear 32x, but nearly, away from the border.
    a, b = fcn32(x)[..., 32:-32, 32:-32], fcn16(x)[..., 32:-32, 32:-32]
    assert (a - b).abs().mean() < 0.03 * a.abs().mean()
    assert (a.argmax(1) == b.argmax(1)).float().mean() > 0.95
    fcn8 = FCN8s(num_classes=4, width=1 / 16, dropout=0.0).init_from(fcn16).eval()
    assert torch.equal(fcn8.upscore2.weight, fcn16.upscore2.weight)
    with pytest.raises(ValueError, match="num_classes=5"):
        FCN16s(num_classes=5, width=1 / 16).init_from(fcn32)
    with pytest.raises(ValueError, match="coarser"):
        FCN16s(num_classes=4, width=1 / 16).init_from(fcn8)


@torch.no_grad()
def test_init_from_the_same_variant_trains_a_net_further():
    # Everything is copied; a fixed final upsampling into a learned one starts bilinear, so
    # the net computes what it did; a learned one is copied as it is.
    torch.manual_seed(0)
    fixed = FCN8s(num_classes=4, width=1 / 16, dropout=0.0).eval()
    for layer in (fixed.score_fr, fixed.score_pool4, fixed.score_pool3):
        torch.nn.init.normal_(layer.weight, std=0.1)
    learned = FCN8s(num_classes=4, width=1 / 16, dropout=0.0, learn_final_upsampling=True)
    learned.init_from(fixed).eval()
    x = torch.rand(1, 3, 64, 96)
    torch.testing.assert_close(learned(x), fixed(x), rtol=0, atol=1e-6)
    learned.upscore_final.weight.add_(0.1 * torch.randn_like(learned.upscore_final.weight))
    again = FCN8s(num_classes=4, width=1 / 16, dropout=0.0, learn_final_upsampling=True)
    again.init_from(learned).eval()
    assert torch.equal(again(x), learned(x))


@pytest.mark.parametrize("cls", [FCN32s, FCN8s])
def test_weights_are_channels_last_and_compute_the_same(cls):
    # Channels-last weights are a speed choice only: every convolution weight is stored that
    # way (also after loading weights), and the outputs equal those of contiguous weights.
    torch.manual_seed(0)
    model = cls(num_classes=6, width=0.125, dropout=0.0, batch_norm=True)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    fresh = cls(num_classes=6, width=0.125, dropout=0.0, batch_norm=True)
    fresh.load_state_dict(model.state_dict())
    for net in (model, fresh):
        convs = [m.weight for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
        assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    contiguous = cls(num_classes=6, width=0.125, dropout=0.0, batch_norm=True)
    contiguous.load_state_dict(model.state_dict())
    contiguous.to(memory_format=torch.contiguous_format)
    assert all(m.weight.is_contiguous() for m in contiguous.modules() if isinstance(m, torch.nn.Conv2d))
    x = torch.rand(2, 3, 75, 101)
    with torch.no_grad():
        ours, reference = model.eval()(x), contiguous.eval()(x)
    assert ours.shape == (2, 6, 75, 101)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4 * reference.abs().max().item())


@pytest.mark.parametrize("x, error, match", [
    (torch.rand(3, 32, 32), ValueError, "4-D"),
    (torch.rand(1, 1, 32, 32), ValueError, "3 colour channels"),
    (torch.rand(1, 4, 32, 32), ValueError, "3 colour channels"),
    (torch.rand(1, 3, 0, 32), ValueError, "empty"),
    (torch.rand(0, 3, 32, 32), ValueError, "empty"),
    (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), TypeError, "float"),
    ([[1.0]], TypeError, "torch.Tensor"),
])
def test_bad_input_is_explained(x, error, match):
    with pytest.raises(error, match=match):
        FCN8s(num_classes=3, width=1 / 32)(x)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="unknown variant"):
        build_model("fcn4s")
    with pytest.raises(ValueError, match="num_classes"):
        FCN8s(num_classes=0)
    with pytest.raises(ValueError, match="width"):
        FCN8s(width=0)


def test_pad_to_multiple_replicates_border():
    x = torch.arange(6.0).reshape(1, 1, 2, 3)
    y = pad_to_multiple(x, 4)
    assert y.shape == (1, 1, 4, 4)
    assert torch.equal(y[0, 0, :2, :3], x[0, 0]) and y[0, 0, 3, 3] == 5.0


def test_imagenet_transplant_from_a_fake_cached_file(tmp_path, monkeypatch):
    """The real loading path, offline: a cached weights file under a temporary TORCH_HOME."""
    from torchvision.models import VGG16_Weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.manual_seed(0)
    source = vgg16()
    torch.save(source.state_dict(), checkpoints / os.path.basename(VGG16_Weights.IMAGENET1K_V1.url))
    model = FCN8s(num_classes=21).init_from_imagenet()
    torch.testing.assert_close(model.backbone.to_pool3[0].conv1_1.weight, source.features[0].weight)
    torch.testing.assert_close(model.backbone.to_pool5.conv5_3.bias, source.features[28].bias)
    torch.testing.assert_close(model.backbone.head.fc6.weight.flatten(1), source.classifier[0].weight)
    torch.testing.assert_close(model.backbone.head.fc7.weight.flatten(1), source.classifier[3].weight)
    assert model.score_fr.weight.abs().sum() == 0  # the 1000-class fc8 is not transplanted


def test_imagenet_offline_message(tmp_path, monkeypatch):
    import torch.hub

    def no_network(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(RuntimeError) as info:
        FCN32s().init_from_imagenet()
    message = str(info.value)
    assert "vgg16-397923af.pth" in message and str(tmp_path / "hub" / "checkpoints") in message
    assert "TORCH_HOME" in message


def test_imagenet_needs_full_width():
    with pytest.raises(ValueError, match="width=1.0"):
        FCN32s(width=0.5).init_from_imagenet(vgg16())
