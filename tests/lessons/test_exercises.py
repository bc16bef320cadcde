"""The implement-it checks: a correct answer passes, each typical mistake gets its own words,
a blank cell says "not done yet" without raising."""

import pytest
import torch
import torch.nn.functional as F

from fcn_lesson.core.upsample import bilinear_kernel
from fcn_lesson.lessons import exercises as ex

# --- bilinear_kernel ------------------------------------------------------------------------------


def kernel_right(k):
    factor = (k + 1) // 2
    centre = factor - 1 if k % 2 == 1 else factor - 0.5
    filt = 1 - (torch.arange(k) - centre).abs() / factor
    return torch.outer(filt, filt)


def kernel_odd_centre_everywhere(k):  # centre = factor - 1 for even k too: shifted peak
    factor = (k + 1) // 2
    filt = 1 - (torch.arange(k) - (factor - 1)).abs() / factor
    return torch.outer(filt, filt)


def kernel_normalised(k):
    kern = kernel_right(k)
    return kern / kern.sum()


def kernel_1d(k):
    return kernel_right(k)[0]


def kernel_wrong_factor(k):  # factor k: too flat
    factor = k
    centre = (k - 1) / 2
    filt = 1 - (torch.arange(k) - centre).abs() / factor
    return torch.outer(filt, filt)


def blank_ellipsis(*args):
    ...


def blank_pass(*args):
    pass


def blank_raises(*args):
    raise NotImplementedError


def test_the_right_kernel_passes():
    verdict = ex.diagnose_bilinear_kernel(kernel_right)
    assert verdict.passed is True and verdict.message.startswith("correct")
    assert ex.diagnose_bilinear_kernel(bilinear_kernel).passed  # the package's own


@pytest.mark.parametrize("fn, words", [
    (kernel_odd_centre_everywhere, "Wrong kernel centre"),
    (kernel_normalised, "did you normalise it?"),
    (kernel_1d, "It looks 1-D"),
    (kernel_wrong_factor, "Check the factor"),
    (lambda k: "a tent", "returned a str"),
    (lambda k: 1 / 0, "raised ZeroDivisionError"),
])
def test_each_kernel_mistake_gets_its_message(fn, words):
    verdict = ex.diagnose_bilinear_kernel(fn)
    assert verdict.passed is False
    assert words in verdict.message, verdict.message


@pytest.mark.parametrize("blank", [blank_ellipsis, blank_pass, blank_raises])
def test_a_blank_kernel_cell_is_not_done_and_does_not_raise(blank, capsys):
    ex.check_bilinear_kernel(blank)
    assert capsys.readouterr().out.strip() == ex.NOT_DONE
    assert ex.diagnose_bilinear_kernel(blank).passed is None


# --- the heads ------------------------------------------------------------------------------------


def head32_right(model, features, height, width):
    return model.upscore_final(model.score_fr(features["fc7"]))[..., :height, :width]


def head16_right(model, features, height, width):
    score = model.upscore2(model.score_fr(features["fc7"])) + model.score_pool4(features["pool4"])
    return model.upscore_final(score)[..., :height, :width]


def head8_right(model, features, height, width):
    score = model.upscore2(model.score_fr(features["fc7"])) + model.score_pool4(features["pool4"])
    score = model.upscore_pool4(score) + model.score_pool3(features["pool3"])
    return model.upscore_final(score)[..., :height, :width]


def head32_late_fusion_equivalent(model, features, height, width):
    # Linear, so scoring after a (fixed, bias-free) upsampling of scores is the same numbers.
    return head32_right(model, features, height, width).clone()


@pytest.fixture(scope="module")
def models():
    return {v: ex.checking_model(v) for v in ("fcn32s", "fcn16s", "fcn8s")}


@pytest.mark.parametrize("diagnose, variant, fn", [
    (ex.diagnose_fcn32s_head, "fcn32s", head32_right),
    (ex.diagnose_fcn32s_head, "fcn32s", head32_late_fusion_equivalent),
    (ex.diagnose_fuse_pool4, "fcn16s", head16_right),
    (ex.diagnose_fuse_pool3, "fcn8s", head8_right),
])
def test_a_right_head_passes(diagnose, variant, fn, models):
    verdict = diagnose(fn, models[variant])
    assert verdict.passed is True, verdict.message
    assert "100 x 150" in verdict.message  # checked on a size that is not a multiple of 32


def test_the_heads_pass_with_a_trained_model_too():
    # The notebooks may pass their classroom model; the same answer must pass with it.
    from fcn_lesson.classroom import load_classroom_model

    assert ex.diagnose_fuse_pool4(head16_right, load_classroom_model("fcn16s", "cpu")).passed


def head32_no_crop(model, features, height, width):
    return model.upscore_final(model.score_fr(features["fc7"]))


def head32_centre_crop(model, features, height, width):
    full = model.upscore_final(model.score_fr(features["fc7"]))
    top, left = (full.shape[-2] - height) // 2, (full.shape[-1] - width) // 2
    return full[..., top:top + height, left:left + width]


def head32_off_by_one(model, features, height, width):
    return model.upscore_final(model.score_fr(features["fc7"]))[..., 1:height + 1, 1:width + 1]


def head32_argmax(model, features, height, width):
    return head32_right(model, features, height, width).argmax(1)


def head32_no_score(model, features, height, width):
    return model.upscore_final.__class__(features["fc7"].shape[1], 32)(features["fc7"])[..., :height, :width]


def head32_align_corners(model, features, height, width):
    score = model.score_fr(features["fc7"])
    return F.interpolate(score, scale_factor=32, mode="bilinear", align_corners=True)[..., :height, :width]


def head32_resize_to_size(model, features, height, width):  # stretches the padded map onto the image
    return F.interpolate(model.score_fr(features["fc7"]), size=(height, width), mode="bilinear")


def head32_negated(model, features, height, width):  # nothing typical: the generic message
    return -head32_right(model, features, height, width)


def head16_no_skip(model, features, height, width):
    return model.upscore_final(model.upscore2(model.score_fr(features["fc7"])))[..., :height, :width]


def head16_add_before_upsampling(model, features, height, width):
    return model.upscore_final(model.score_fr(features["fc7"]) + model.score_pool4(features["pool4"]))


def head16_add_pooled(model, features, height, width):
    from fcn_lesson.core.upsample import bilinear_upsample

    score = model.score_fr(features["fc7"]) + F.avg_pool2d(model.score_pool4(features["pool4"]), 2)
    return bilinear_upsample(score, 32)[..., :height, :width]


def head16_wrong_skip(model, features, height, width):
    score = model.upscore2(model.score_fr(features["fc7"])) + model.score_pool4(features["pool3"])
    return model.upscore_final(score)[..., :height, :width]


def head16_interpolate(model, features, height, width):
    up = F.interpolate(model.score_fr(features["fc7"]), scale_factor=2, mode="bilinear")
    return model.upscore_final(up + model.score_pool4(features["pool4"]))[..., :height, :width]


def head16_average(model, features, height, width):
    score = (model.upscore2(model.score_fr(features["fc7"])) + model.score_pool4(features["pool4"])) / 2
    return model.upscore_final(score)[..., :height, :width]


def head16_no_crop(model, features, height, width):
    score = model.upscore2(model.score_fr(features["fc7"])) + model.score_pool4(features["pool4"])
    return model.upscore_final(score)


def head8_no_pool3(model, features, height, width):
    score = model.upscore2(model.score_fr(features["fc7"])) + model.score_pool4(features["pool4"])
    return model.upscore_final(model.upscore_pool4(score))[..., :height, :width]


def head8_pool4_twice(model, features, height, width):
    score = model.upscore2(model.score_fr(features["fc7"])) + model.score_pool4(features["pool4"])
    score = model.upscore_pool4(score) + model.score_pool3(features["pool4"])
    return model.upscore_final(score)[..., :height, :width]


def head8_shifted(model, features, height, width):
    score = model.upscore2(model.score_fr(features["fc7"])) + model.score_pool4(features["pool4"])
    score = model.upscore_pool4(score) + model.score_pool3(features["pool3"])
    return model.upscore_final(score)[..., 4:height + 4, 4:width + 4]


@pytest.mark.parametrize("diagnose, variant, fn, words", [
    (ex.diagnose_fcn32s_head, "fcn32s", head32_no_crop, "forgot the crop"),
    (ex.diagnose_fcn32s_head, "fcn32s", head32_centre_crop, "misaligned by (+14, +5)"),
    (ex.diagnose_fcn32s_head, "fcn32s", head32_off_by_one, "misaligned by (+1, +1)"),
    (ex.diagnose_fcn32s_head, "fcn32s", head32_argmax, "not their argmax"),
    (ex.diagnose_fcn32s_head, "fcn32s", head32_no_score, "expected one per class"),
    (ex.diagnose_fcn32s_head, "fcn32s", head32_align_corners, "align_corners=True"),
    (ex.diagnose_fcn32s_head, "fcn32s", head32_resize_to_size, "stretches it"),
    (ex.diagnose_fcn32s_head, "fcn32s", head32_negated, "right shape, wrong values"),
    (ex.diagnose_fuse_pool4, "fcn16s", head16_no_skip, "the pool4 skip is missing"),
    (ex.diagnose_fuse_pool4, "fcn16s", head16_add_before_upsampling, "different sizes"),
    (ex.diagnose_fuse_pool4, "fcn16s", head16_add_pooled, "added pool4's scores before upsampling"),
    (ex.diagnose_fuse_pool4, "fcn16s", head16_wrong_skip, "the wrong map went into a score layer"),
    (ex.diagnose_fuse_pool4, "fcn16s", head16_interpolate, "instead of the net's learned model.upscore2"),
    (ex.diagnose_fuse_pool4, "fcn16s", head16_average, "averaged"),
    (ex.diagnose_fuse_pool4, "fcn16s", head16_no_crop, "forgot the crop"),
    (ex.diagnose_fuse_pool3, "fcn8s", head8_no_pool3, "the pool3 skip is missing"),
    (ex.diagnose_fuse_pool3, "fcn8s", head8_pool4_twice, "pool3"),
    (ex.diagnose_fuse_pool3, "fcn8s", head8_shifted, "misaligned by (+4, +4)"),
])
def test_each_head_mistake_gets_its_message(diagnose, variant, fn, words, models):
    verdict = diagnose(fn, models[variant])
    assert verdict.passed is False
    assert words in verdict.message, verdict.message


@pytest.mark.parametrize("check", [ex.check_fcn32s_head, ex.check_fuse_pool4, ex.check_fuse_pool3])
@pytest.mark.parametrize("blank", [blank_ellipsis, blank_pass, blank_raises])
def test_a_blank_head_cell_is_not_done_and_does_not_raise(check, blank, capsys):
    check(blank)
    assert capsys.readouterr().out.strip() == ex.NOT_DONE


def test_a_head_checked_against_the_wrong_variant_is_refused(models):
    with pytest.raises(ValueError, match="against an FCN-16s, not a fcn8s"):
        ex.diagnose_fuse_pool4(head16_right, models["fcn8s"])
