"""Full-mode helpers of notebook 7: what is cached, what is missing, a photo as VGG16 expects it."""


from fcn_lesson.datasets.voc import IMAGENET_MEAN, IMAGENET_STD, fake_voc_tree
from fcn_lesson.lessons.real_images import (
    imagenet_weights_cached,
    imagenet_weights_path,
    sample_photo,
    to_imagenet_tensor,
    voc_missing,
)


def test_weights_path_follows_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = imagenet_weights_path()
    assert path == tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth"
    assert not imagenet_weights_cached()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    assert imagenet_weights_cached()


def test_voc_missing_explains_or_says_nothing(tmp_path):
    assert "Expected layout" in voc_missing(tmp_path / "nowhere")
    root = fake_voc_tree(tmp_path / "voc", num_images=2, size=(20, 24))
    assert voc_missing(root) is None and voc_missing(root, image_set="train") is None


def test_sample_photo_is_a_real_rgb_image():
    photo = sample_photo()
    assert photo.size == (512, 600) and photo.mode == "RGB"
    x = to_imagenet_tensor(photo)
    assert x.shape == (1, 3, 600, 512)
    back = x[0, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    assert 0 <= back.min() and back.max() <= 1 and back.std() > 0.1
