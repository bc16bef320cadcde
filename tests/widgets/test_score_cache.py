"""The explorers' score-map cache: made in batches up front, equal to image-by-image maps."""

import pytest
import torch
from support import scored_classroom_model
from torch.utils.data import ConcatDataset

from fcn_lesson.datasets.shapes import ShapesDataset
from fcn_lesson.lessons.explain import score_maps
from fcn_lesson.widgets.score_cache import ScoreMapCache


def _counting(model) -> list:
    calls = []
    model.backbone.register_forward_hook(lambda _module, inputs, _output: calls.append(len(inputs[0])))
    return calls


@pytest.mark.parametrize("variant, streams", [
    ("fcn16s", ("score_fr", "score_pool4")), ("fcn8s", ("score_fr", "score_pool4", "score_pool3"))])
def test_batched_maps_equal_image_by_image_ones(variant, streams):
    model = scored_classroom_model(variant)
    data = ShapesDataset(5, (72, 90), seed=3)  # padded to 96 x 96 inside the net
    calls = _counting(model)
    cache = ScoreMapCache(model, data, batch_size=2)
    assert calls == [2, 2, 1]  # three forward passes, while the cache is made
    for i in range(len(data)):
        single = score_maps(model, data[i][0])
        assert tuple(cache[i]) == streams
        for s in streams:
            assert cache[i][s].shape == single[s].shape
            # Batched convolutions add in another order: equal up to float rounding
            scale = single[s].abs().max().item()
            torch.testing.assert_close(cache[i][s], single[s], rtol=1e-5, atol=1e-5 * scale)
    assert calls == [2, 2, 1] + [1] * len(data)  # reading the cache ran nothing (the 5 are score_maps')


def test_a_batch_holds_images_of_one_size():
    model = scored_classroom_model("fcn8s")
    data = ConcatDataset([ShapesDataset(3, 64, seed=1), ShapesDataset(2, (96, 80), seed=2)])
    calls = _counting(model)
    cache = ScoreMapCache(model, data, batch_size=4)
    assert calls == [3, 2]
    assert cache[2]["score_pool3"].shape[-2:] == (8, 8) and cache[3]["score_pool3"].shape[-2:] == (12, 12)


def test_maps_are_small():
    # 128 x 128 images, as in notebook 5: 6 classes x (4 x 4 + 8 x 8 + 16 x 16) floats, 8 KB an
    # image under an FCN-8s, 2 KB under an FCN-16s; its 200 images and two models take 2 MB
    data = ShapesDataset(40, 128, seed=0)
    sizes = {v: ScoreMapCache(scored_classroom_model(v), data).nbytes for v in ("fcn8s", "fcn16s")}
    assert sizes["fcn8s"] == 40 * 6 * (4 * 4 + 8 * 8 + 16 * 16) * 4
    assert sizes["fcn16s"] == 40 * 6 * (4 * 4 + 8 * 8) * 4


def test_a_large_dataset_is_run_image_by_image_and_only_the_last_few_kept():
    model = scored_classroom_model("fcn16s")
    data = ShapesDataset(5, 64, seed=4)
    calls = _counting(model)
    cache = ScoreMapCache(model, data, up_front_limit=4, cache_size=2)
    assert not cache.up_front and calls == [] and cache.nbytes == 0
    first = cache[0]
    assert cache[0] is first and calls == [1]  # kept
    assert cache[1] is not cache[2] and len(calls) == 3
    assert cache[0] is not first and len(calls) == 4  # pushed out by 1 and 2: run again
    torch.testing.assert_close(cache[3]["score_pool4"], score_maps(model, data[3][0])["score_pool4"])
