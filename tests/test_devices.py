"""Device bugs caught on a CPU: the library's tensor paths, run with their inputs on a second device.

On a GPU, library code that creates a tensor without `device=` gets a CPU tensor, and the first
operation mixing it with the input (on the GPU) fails. On a CPU-only machine both are the CPU and
the bug hides. So here the inputs and models go to a *stand-in device*: tensors that say they are
on `meta:0` (a device every PyTorch build has, whose device guards do nothing) but carry real
data on the CPU. A dispatch mode runs every operation on that data and applies CUDA's device rules
first: all tensor operands on one device, except CPU scalars (0-dim), CPU index tensors, and
copies between devices. PyTorch's own meta device cannot do this job alone: it has no data (no
`.item()`, no boolean masks, no `bincount`) and accepts a CPU weight in a convolution.

A tensor made on plain `meta` (the shape-only models of the output grid and the cost tables) is
a genuine meta tensor, as without the mode.
"""

import contextlib
import copy
import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from support import scored_classroom_model
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.data import TensorDataset

from fcn_lesson import BilinearUpsample, ShapesDataset, bilinear_upsample, convolutionalize, fc_to_conv
from fcn_lesson.core.classifier import CLASSIFIER_CLASSES, classroom_vgg16
from fcn_lesson.engine import classify, loop, metrics
from fcn_lesson.engine.loop import predict
from fcn_lesson.lessons import fusion, heatmaps, history, layers, output_grid, upsampling

# Index 0 tells it from the genuine meta device (index None), which still works as usual.
STAND_IN = torch.device("meta", 0)
aten = torch.ops.aten
# Operations that may take CPU index tensors for an input on another device (CUDA allows it).
INDEXING = {aten.index.Tensor, aten.index_put_.default, aten.index_put.default,
            aten._index_put_impl_.default}
# Operations that move data between devices.
COPIES = {aten._to_copy.default, aten.copy_.default}


class StandIn(torch.Tensor):
    """A tensor on the stand-in device, holding its data as a CPU tensor `.cpu_data`."""

    @staticmethod
    def __new__(cls, data: torch.Tensor):
        tensor = torch.Tensor._make_wrapper_subclass(
            cls, data.size(), strides=data.stride(), storage_offset=data.storage_offset(),
            dtype=data.dtype, device=STAND_IN, requires_grad=data.requires_grad)
        tensor.cpu_data = data
        return tensor

    def tolist(self):  # PyTorch refuses tolist() on subclasses; a CUDA tensor allows it
        return self.cpu_data.tolist()

    def numpy(self, *, force=False):  # as CUDA's "can't convert cuda:0 device type tensor to numpy"
        raise TypeError("can't convert a stand-in device tensor to numpy; use Tensor.cpu() first")

    def __repr__(self):
        return f"StandIn({self.cpu_data!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise RuntimeError(f"{func} on a stand-in tensor outside `stand_in_device()`")


class DeviceMixError(RuntimeError):
    pass


def _is_stand_in(device) -> bool:
    return device is not None and torch.device(device) == STAND_IN


class _StandInDispatch(TorchDispatchMode):

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        every = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        if func in COPIES:
            operands = []
        elif func in INDEXING:
            operands = [args[0], *args[2:]]  # the indices (args[1]) may stay on the CPU ...
            if not isinstance(args[0], StandIn) and any(isinstance(a, StandIn) for a in every):
                raise DeviceMixError(f"{func}: a CPU tensor indexed with stand-in indices")  # ... not back
        else:
            operands = every
        cpu = [a for a in operands if not isinstance(a, StandIn) and a.device.type == "cpu"]
        if any(isinstance(a, StandIn) for a in operands) and any(a.dim() > 0 for a in cpu):
            shapes = [tuple(a.shape) for a in cpu if a.dim() > 0]
            raise DeviceMixError(f"{func} mixes tensors on the input's device with CPU tensors of "
                                 f"shapes {shapes} (made without device=?)")
        real_kwargs = dict(kwargs)
        if _is_stand_in(kwargs.get("device")):
            real_kwargs["device"] = torch.device("cpu")
        out = func(*tree_map(_cpu_data, args), **tree_map(_cpu_data, real_kwargs))
        if func._schema.is_mutable and "out" not in kwargs and isinstance(args[0], torch.Tensor):
            return args[0]  # in place: the same (possibly stand-in) tensor
        if "out" in kwargs:
            return kwargs["out"]
        on_stand_in = (_is_stand_in(kwargs["device"]) if "device" in kwargs
                       else any(isinstance(a, StandIn) for a in every))
        return tree_map(lambda a: StandIn(a) if on_stand_in and isinstance(a, torch.Tensor) else a, out)


def _cpu_data(value):
    return value.cpu_data if isinstance(value, StandIn) else value


@contextlib.contextmanager
def stand_in_device():
    """Inside: `x.to(STAND_IN)` puts a tensor or module on the stand-in device, and an operation
    mixing it with a non-scalar CPU tensor raises DeviceMixError."""
    with _StandInDispatch():
        yield


def moved(x):
    """A copy of tensor or module `x` on the stand-in device (call inside `stand_in_device()`)."""
    return copy.deepcopy(x).to(STAND_IN) if isinstance(x, nn.Module) else x.to(STAND_IN)


def assert_on(x, device: str):
    where = "stand-in" if isinstance(x, StandIn) else x.device.type
    assert where == device, f"expected a tensor on {device}, got one on {where}"


def assert_same(got, expected):
    """Same values (computed by the same CPU kernels, so exactly)."""
    got = got.cpu() if isinstance(got, torch.Tensor) else got
    torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)


# --- the checker itself ---------------------------------------------------------------------

def _full_without_device(x):  # the known bug's pattern (metrics.boundary_distance, before the fix)
    return torch.full(x.shape, 3, dtype=x.dtype) + x


def _full_with_device(x):
    return torch.full(x.shape, 3, dtype=x.dtype, device=x.device) + x


def test_checker_raises_on_a_tensor_made_without_device():
    with stand_in_device():
        x = moved(torch.arange(6).reshape(2, 3))
        with pytest.raises(DeviceMixError, match=r"aten.add.Tensor mixes .* shapes \[\(2, 3\)\]"):
            _full_without_device(x)
        assert_same(_full_with_device(x), torch.arange(3, 9).reshape(2, 3))


def test_checker_applies_cudas_rules_and_computes_on_real_data():
    with stand_in_device():
        x = moved(torch.arange(6.0).reshape(2, 3))
        assert x.device == STAND_IN and isinstance(x, StandIn)
        # Allowed, as on CUDA: CPU scalars, CPU indices and masks, copies, .cpu(), .item().
        y = x * torch.tensor(2.0)
        y[torch.tensor([True, False])] = 0
        y[x > 4] = 7
        assert_on(y, "stand-in")
        assert_same(y, torch.tensor([[0.0, 0.0, 0.0], [6.0, 8.0, 7.0]]))
        assert y.sum().item() == 21 and y.tolist()[1] == [6.0, 8.0, 7.0]
        assert_on(y.cpu(), "cpu")
        torch.zeros(2, 3).copy_(y)
        # Not allowed, as on CUDA: a non-scalar CPU operand, CPU weights, CPU values put in.
        for mix in (lambda: x + torch.ones(3), lambda: torch.cat([x, torch.ones(2, 3)]),
                    lambda: torch.nn.functional.linear(x, torch.ones(4, 3)),
                    lambda: torch.zeros(2, 3) + x.sum(),
                    lambda: x.index_put_((torch.tensor([0]),), torch.ones(3)),
                    lambda: torch.zeros(2, 3)[x > 4]):
            with pytest.raises(DeviceMixError):
                mix()
        with pytest.raises(TypeError, match="numpy"):
            x.numpy()
        # A model moved there computes what it computes on the CPU; genuine meta stays meta.
        conv = nn.Conv2d(3, 2, 3)
        image = torch.rand(1, 3, 8, 8)
        assert_same(moved(conv)(moved(image)), conv(image))
        with torch.device("meta"):
            shape_only = nn.Conv2d(3, 2, 3)
        assert not isinstance(shape_only.weight, StandIn) and shape_only.weight.device.type == "meta"


# --- the library ------------------------------------------------------------------------------

NUM_CLASSES = 5


@pytest.fixture(scope="module")
def labels():
    generator = torch.Generator().manual_seed(0)
    target = torch.randint(NUM_CLASSES, (2, 24, 30), generator=generator)
    target[:, :8] = 1  # a region and an edge
    target[0, -3:, -3:] = metrics.IGNORE_INDEX
    pred = torch.where(torch.rand(target.shape, generator=generator) < 0.7, target.clamp(max=NUM_CLASSES - 1),
                       torch.randint(NUM_CLASSES, target.shape, generator=generator))
    return pred, target


@pytest.mark.parametrize("variant", ["fcn32s", "fcn16s", "fcn8s"])
def test_models_forward_and_forward_maps(variant):
    model = scored_classroom_model(variant)
    images = torch.rand(2, 3, 40, 70)
    with torch.no_grad():
        expected = model.forward_maps(images)
        expected_out = model(images)
    with stand_in_device(), torch.no_grad():
        net, x = moved(model), moved(images)
        maps = net.forward_maps(x)
        assert set(maps) == set(expected)
        for name, value in maps.items():
            assert_on(value, "stand-in")
            assert_same(value, expected[name])
        assert_same(net(x), expected_out)
        assert_on(net.fuse(maps, None, 40, 70, pool4_gain=0.0)["out"], "stand-in")


def test_fc_to_conv():
    linear = nn.Linear(2 * 3 * 3, 4)
    x = torch.rand(1, 2, 5, 6)
    expected = fc_to_conv(linear, 2, 3)(x)
    with stand_in_device():
        conv = fc_to_conv(moved(linear), 2, 3)
        assert_on(conv.weight, "stand-in")
        assert_same(conv(moved(x)), expected)


def test_upsampling():
    x = torch.rand(1, 3, 5, 6)
    layers_ = [BilinearUpsample(3, 4), BilinearUpsample(3, 2, learnable=True)]
    with stand_in_device():
        got = bilinear_upsample(moved(x), 8)
        assert_on(got, "stand-in")
        assert_same(got, bilinear_upsample(x, 8))
        for layer in layers_:
            out = moved(layer)(moved(x))
            assert_on(out, "stand-in")
            assert_same(out, layer(x))


def test_metrics(labels):
    pred, target = labels
    expected = metrics.score_predictions(pred, target, NUM_CLASSES)
    distance = metrics.boundary_distance(target, 6)
    band = metrics.boundary_band(target)
    by_distance = metrics.accuracy_by_boundary_distance(pred, target, 6)
    with stand_in_device():
        p, t = moved(pred), moved(target)
        got = metrics.boundary_distance(t, 6)
        assert_on(got, "stand-in")
        assert_same(got, distance)
        assert_same(metrics.boundary_distance(t[0], 6), distance[:1])
        assert_same(metrics.boundary_band(t), band)
        assert metrics.boundary_accuracy(p, t) == expected["boundary_acc"]
        accuracy, count = metrics.accuracy_by_boundary_distance(p, t, 6)
        assert_same(accuracy, by_distance[0])
        assert_same(count, by_distance[1])
        # The confusion matrix is summed over batches on the CPU, whatever the input's device.
        cm = metrics.confusion_matrix(p, t, NUM_CLASSES)
        assert_on(cm, "cpu")
        assert_same(cm, expected["confusion"])
        scores = metrics.segmentation_scores(moved(cm))
        for name in ("pixel_acc", "mean_acc", "mean_iou", "fw_iou"):
            assert scores[name] == expected[name]
        assert_same(scores["iou"], expected["iou"])
        got = metrics.score_predictions(p, t, NUM_CLASSES)
        assert got["mean_iou"] == expected["mean_iou"]
        assert got["boundary_acc"] == expected["boundary_acc"]


def test_predict():
    model = scored_classroom_model("fcn8s")
    images = torch.rand(3, 3, 36, 44)
    expected = predict(model, images)
    with stand_in_device():
        net = moved(model)
        for x in (images, moved(images)):  # a CPU batch is moved to the model's device
            got = predict(net, x, batch_size=2)
            assert_on(got, "cpu")
            assert_same(got, expected)


def test_evaluate_and_fit(monkeypatch):
    data = ShapesDataset(2, 32, seed=0)
    model = scored_classroom_model("fcn16s").train()
    trained = copy.deepcopy(model)
    expected = loop.fit(trained, data, data, epochs=1, batch_size=2, max_steps=1, progress=False,
                        device="cpu")[0]
    # bf16 autocast is for CUDA only (the GPU check runs it); the stand-in trains in fp32.
    monkeypatch.setattr(loop, "_autocast", lambda device: contextlib.nullcontext())
    with stand_in_device():
        net = moved(model)
        history = loop.fit(net, data, data, epochs=1, batch_size=2, max_steps=1, progress=False,
                           device=STAND_IN)
        for name, weight in net.named_parameters():
            assert_on(weight, "stand-in")
            assert_same(weight, dict(trained.named_parameters())[name].detach())
        assert loop.evaluate(net, data, batch_size=2)["mean_iou"] == expected["val_mean_iou"]
    assert {k: v for k, v in history[0].items() if k != "seconds"} == {
        k: v for k, v in expected.items() if k != "seconds"}


def test_classroom_classifier_and_its_heat_maps():
    torch.manual_seed(0)
    model = classroom_vgg16().eval()
    classes = len(CLASSIFIER_CLASSES)
    data = TensorDataset(torch.randint(256, (2, 3, 224, 224), dtype=torch.uint8), torch.tensor([0, 3]))
    canvas = torch.rand(1, 3, 256, 288)
    accuracy = classify.classifier_accuracy(model, data, batch_size=2)
    confusion = classify.confusion(model, data, classes, batch_size=2)
    probs, best = heatmaps.class_heatmaps(convolutionalize(model), canvas)
    with stand_in_device():
        net = moved(model)
        assert classify.classifier_accuracy(net, data, batch_size=2) == accuracy
        np.testing.assert_array_equal(classify.confusion(net, data, classes, batch_size=2), confusion)
        got_probs, got_best = heatmaps.class_heatmaps(convolutionalize(net), moved(canvas))
        assert_same(got_probs, probs)
        assert got_best == best
        classify.fit_classifier(net, data, epochs=1, batch_size=2, max_steps=1, progress=False,
                                device=STAND_IN)
        assert_on(next(net.parameters()), "stand-in")


def test_layer_activations():
    model = scored_classroom_model("fcn16s")
    image = torch.rand(3, 40, 52)
    expected = layers.capture_activations(model, image)
    with stand_in_device():
        got = layers.capture_activations(moved(model), moved(image))
    assert list(got) == list(expected)
    for name in got:
        assert_on(got[name], "cpu")
        assert_same(got[name], expected[name])


def test_upsampling_lesson():
    image = upsampling.pattern_image(10)
    kernel = upsampling.upsampling_kernel(4, 8)
    expected = upsampling.compare_upsampling(image, 4, 7, "box")
    steps = upsampling.scatter_add_steps(image[:2, :3], kernel, 4)
    with stand_in_device():
        got = upsampling.compare_upsampling(moved(image), 4, 7, "box")
        for field in ("upsampled", "reference", "gains"):
            assert_same(getattr(got, field), getattr(expected, field))
        assert got.verdict == expected.verdict
        out, shift = upsampling.transposed_upsample(moved(image)[None, None], kernel, 4)
        assert_on(out, "stand-in")
        assert_same(upsampling.phase_gains(moved(kernel), 4), upsampling.phase_gains(kernel, 4))
        stamps = upsampling.scatter_add_steps(moved(image[:2, :3]), moved(kernel), 4)
        assert_on(stamps, "stand-in")
        assert_same(stamps, steps)


def test_output_grid_beside_the_stand_in_device():
    # Shape-only models built on the genuine meta device, from plain ints: nothing to move,
    # but the computation must not be disturbed by the checker.
    expected = output_grid.output_grid(300, 420, 2, 3, head="FCN (fc6 padding 3)")
    output_grid._head_model.cache_clear()
    with stand_in_device():
        got = output_grid.output_grid(300, 420, 2, 3, head="FCN (fc6 padding 3)")
    output_grid._head_model.cache_clear()  # its meta model was built inside the checker
    assert got == expected


def test_fusion_lesson(labels):
    model = scored_classroom_model("fcn8s")
    images = torch.rand(2, 3, 24, 30)
    pred, target = labels
    with torch.no_grad():
        maps = model.forward_maps(images)
    expected_ablation = fusion.skip_ablation(model, images, target)
    expected_panels = fusion.fusion_panels(maps, 2, index=1)
    with stand_in_device():
        net = moved(model)
        with torch.no_grad():
            stand_in_maps = net.forward_maps(moved(images))
        panels = fusion.fusion_panels(stand_in_maps, 2, index=1)
        for row, expected_row in zip(panels, expected_panels, strict=True):
            for (_, _, value, _), (_, _, expected, _) in zip(row, expected_row, strict=True):
                assert_same(value, expected)
        fusion.plot_fusion(stand_in_maps, 2, image=moved(images[0]), target=moved(target[0]))
        for x in (images, moved(images)):
            ablation = fusion.skip_ablation(net, x, target)
            assert {k: v["mean_iou"] for k, v in ablation.items()} == {
                k: v["mean_iou"] for k, v in expected_ablation.items()}
        p, t = moved(pred), moved(target)
        assert fusion.image_mean_iou(p[0], t[0], NUM_CLASSES) == fusion.image_mean_iou(
            pred[0], target[0], NUM_CLASSES)
        assert_same(fusion.per_image_mean_iou(p, t, NUM_CLASSES),
                    fusion.per_image_mean_iou(pred, target, NUM_CLASSES))


def test_before_and_after_fcn_lesson(labels):
    model = scored_classroom_model("fcn32s")
    images = torch.rand(2, 3, 24, 30)
    _, target = labels
    stitched = history.shift_and_stitch(model, images, 16)
    dilated = history.dilated_scores(model, images, 8)
    up = history.upsample_scores(dilated, 8, 24, 30)
    iou = history.mean_iou(model, images, target.clamp(max=model.num_classes - 1), model.num_classes)
    with stand_in_device():
        net, x = moved(model), moved(images)
        for got, expected in ((history.shift_and_stitch(net, x, 16), stitched),
                              (history.dilated_scores(net, x, 8), dilated),
                              (history.upsample_scores(moved(dilated), 8, 24, 30), up)):
            assert_on(got, "stand-in")
            assert_same(got, expected)
        assert history.mean_iou(net, x, target.clamp(max=model.num_classes - 1), model.num_classes) == iou


def test_explorers_with_a_model_on_the_device():
    from fcn_lesson.widgets.fusion import FusionExplorer
    from fcn_lesson.widgets.layers import LayerExplorer

    model = scored_classroom_model("fcn8s")
    data = ShapesDataset(2, 48, seed=3)
    expected_fusion = FusionExplorer(model, data)
    expected_fusion.pool4_gain.value = 0.5
    expected_layer = LayerExplorer(model, data, layer="pool3", channel=2).update()
    with stand_in_device():
        net = moved(model)
        fusion_explorer = FusionExplorer(net, data)
        fusion_explorer.pool4_gain.value = 0.5
        assert_same(fusion_explorer.result.class_score, expected_fusion.result.class_score)
        assert fusion_explorer.result.mean_iou == expected_fusion.result.mean_iou
        np.testing.assert_array_equal(LayerExplorer(net, data, layer="pool3", channel=2).update(),
                                      expected_layer)
        if importlib.util.find_spec("fcn_lesson.widgets.pixel") is not None:  # being written
            from fcn_lesson.widgets.pixel import PixelExplorer

            explorer = PixelExplorer(net, data, row=20, col=30)
            assert_same(explorer.result.explanation.logits,
                        PixelExplorer(model, data, row=20, col=30).result.explanation.logits)


@pytest.mark.skipif(importlib.util.find_spec("fcn_lesson.lessons.explain") is None,
                    reason="fcn_lesson.lessons.explain is not there yet")
@pytest.mark.parametrize("variant", ["fcn16s", "fcn8s"])
def test_explain_pixel(variant):
    from fcn_lesson.lessons import explain

    model = scored_classroom_model(variant)
    image = torch.rand(3, 37, 45)
    expected = explain.explain_pixel(model, image, 20, 30)
    with stand_in_device():
        got = explain.explain_pixel(moved(model), moved(image), 20, 30)
        assert explain.explain_sentence(got) == explain.explain_sentence(expected)
        explain.plot_pixel_explanation(got, moved(image))
    assert_same(got.logits, expected.logits)
    for stream in expected.contributions:
        assert_same(got.contributions[stream], expected.contributions[stream])


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine may have a GPU")
def test_gpu_check_says_at_once_that_it_needs_cuda(tmp_path):
    script = Path(__file__).resolve().parent.parent / ".ci" / "gpu-check"
    result = subprocess.run([script], capture_output=True, text=True, timeout=30,
                            env={**os.environ, "GPU_CHECK_OUT": str(tmp_path)})
    assert result.returncode == 1
    assert "needs a CUDA machine" in result.stderr and "make test" in result.stderr
    assert not any(tmp_path.iterdir())  # stopped before any step
