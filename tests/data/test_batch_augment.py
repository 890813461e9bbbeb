"""The batched augmentation that runs on the device: correctness, and statistical equivalence with the per-sample
albumentations pipeline it replaces."""

import dataclasses

import numpy as np
import pytest
import torch

from nla.data import Augmentation, batch_eval_transform, batch_train_augment, eval_transform, train_transform
from nla.data.sources.rafdb import MEAN, STD

OFF = Augmentation(noise_p=0.0, flip_p=0.0, erasing_p=0.0)


def albumentations_batch(images: np.ndarray, augmentation: Augmentation, size: int, seed: int = 0) -> torch.Tensor:
    transform = train_transform(augmentation, size, MEAN, STD)
    transform.set_random_seed(seed)
    return torch.stack([transform(image=image)["image"] for image in images])


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """Normalised tensors back to 0..255."""
    return (x * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]) * 255


def test_shapes_ranges_and_the_exact_mirror():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (16, 20, 24, 3), dtype=torch.uint8)
    views = batch_train_augment(images, Augmentation(), 32, MEAN, STD)
    assert views.shape == (32, 3, 32, 32) and views.dtype == torch.float32
    assert views.is_contiguous(memory_format=torch.channels_last)  # the backbone's layout: no copy before the model
    view, mirror = views.chunk(2)
    assert torch.equal(mirror, view.flip(-1))
    low = (0 - torch.tensor(MEAN)) / torch.tensor(STD)
    high = (1 - torch.tensor(MEAN)) / torch.tensor(STD)
    assert torch.all(view >= low[:, None, None].min() - 1e-5) and torch.all(view <= high[:, None, None].max() + 1e-5)
    evaluated = batch_eval_transform(images, 32, MEAN, STD)
    reference = torch.stack([eval_transform(32, MEAN, STD)(image=i.numpy())["image"] for i in images])
    assert torch.allclose(evaluated, reference, atol=0.02)  # OpenCV rounds the resized uint8; the device path does not


def test_erasing_is_applied_identically_to_both_views():
    images = torch.full((32, 16, 16, 3), 200, dtype=torch.uint8)
    view, mirror = batch_train_augment(images, dataclasses.replace(OFF, erasing_p=1.0), 16, MEAN, STD).chunk(2)
    erased, erased_mirror = view == 0, mirror == 0
    assert erased.any(dim=(1, 2, 3)).all()  # p = 1: every image has a patch
    assert torch.equal(erased_mirror, erased.flip(-1))
    assert torch.equal(erased.all(dim=1), erased.any(dim=1))  # the patch covers all channels


def test_mirror_flips_back_to_the_view_whatever_the_random_flip():
    gradient = (
        torch.arange(16, dtype=torch.uint8).repeat(16, 1)[None, :, :, None].expand(64, 16, 16, 3).contiguous() * 10
    )
    view, mirror = batch_train_augment(gradient, dataclasses.replace(OFF, flip_p=0.5), 16, MEAN, STD).chunk(2)
    rising = view[:, 0, 0, -1] > view[:, 0, 0, 0]
    assert 10 < rising.sum() < 54  # about half flipped
    assert torch.equal(mirror[rising], view[rising].flip(-1))


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    grid = np.sort(np.concatenate([a, b]))
    cdf_a = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    cdf_b = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max())


N = 1500


def test_flip_rate_is_the_same_in_both_paths():
    image = np.zeros((12, 12, 3), dtype=np.uint8)
    image[:, :6] = 255
    settings = dataclasses.replace(OFF, flip_p=0.5)
    album = albumentations_batch(np.repeat(image[None], N, 0), settings, 12)
    torch.manual_seed(0)
    device, _ = batch_train_augment(torch.from_numpy(np.repeat(image[None], N, 0)), settings, 12, MEAN, STD).chunk(2)
    rate_album = (album[:, 0, 0, -1] > album[:, 0, 0, 0]).float().mean().item()
    rate_device = (device[:, 0, 0, -1] > device[:, 0, 0, 0]).float().mean().item()
    assert rate_album == pytest.approx(0.5, abs=0.05) and rate_device == pytest.approx(0.5, abs=0.05)


def test_gaussian_noise_matches_in_rate_and_variance():
    image = np.full((N, 16, 16, 3), 128, dtype=np.uint8)
    settings = dataclasses.replace(OFF, noise_p=0.5)
    album = to_pixels(albumentations_batch(image, settings, 16))
    torch.manual_seed(0)
    device = to_pixels(batch_train_augment(torch.from_numpy(image), settings, 16, MEAN, STD)[:N])
    for pixels in (album, device):
        per_image_var = pixels.reshape(N, -1).var(dim=1)
        noisy = per_image_var > 5
        assert noisy.float().mean().item() == pytest.approx(0.5, abs=0.05)
        assert per_image_var[noisy].mean().item() == pytest.approx(
            30.0 + 1 / 12, rel=0.05
        )  # variance 30, plus rounding
        assert per_image_var[~noisy].max().item() < 1e-3


def test_erasing_draws_the_same_area_and_shape_distribution():
    image = np.full((N, 32, 32, 3), 255, dtype=np.uint8)
    settings = dataclasses.replace(OFF, erasing_p=0.5)
    album = albumentations_batch(image, settings, 32)
    torch.manual_seed(0)
    device, _ = batch_train_augment(torch.from_numpy(image), settings, 32, MEAN, STD).chunk(2)
    stats = {}
    for name, x in (("albumentations", album), ("device", device)):
        erased = x[:, 0] == 0
        area = erased.float().mean(dim=(1, 2)).numpy()
        rows = erased.any(dim=2).sum(dim=1).float().numpy()
        stats[name] = (area, rows)
        assert (area > 0).mean() == pytest.approx(0.5, abs=0.05)
        hit = area[area > 0]
        assert hit.min() >= 0.015 and hit.max() <= 0.3 + 2 * 32 / 32**2  # h and w are rounded to whole pixels
    (area_a, rows_a), (area_d, rows_d) = stats["albumentations"], stats["device"]
    assert ks_statistic(area_a[area_a > 0], area_d[area_d > 0]) < 0.08
    assert ks_statistic(rows_a[rows_a > 0], rows_d[rows_d > 0]) < 0.08


def test_whole_pipeline_pixel_statistics_agree():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(600, 20, 20, 3), dtype=np.uint8)
    album = albumentations_batch(images, Augmentation(), 40)
    torch.manual_seed(0)
    device, _ = batch_train_augment(torch.from_numpy(images), Augmentation(), 40, MEAN, STD).chunk(2)
    for c in range(3):
        assert device[:, c].mean().item() == pytest.approx(album[:, c].mean().item(), abs=0.03)
        assert device[:, c].std().item() == pytest.approx(album[:, c].std().item(), rel=0.03)
        assert (device[:, c] == 0).float().mean().item() == pytest.approx(
            (album[:, c] == 0).float().mean().item(), abs=0.01
        )


def test_erasing_fills_exactly_the_drawn_boxes():
    from nla.data.batch_augment import erasing_boxes, fill_boxes_

    images = torch.randn(64, 3, 40, 40)
    boxes = erasing_boxes(64, 40, 40, (0.02, 0.3), (0.3, 3.3), images.device)
    chosen = torch.rand(64) < 0.5
    filled = fill_boxes_(images.clone(), boxes, chosen, 0.0)
    expected = images.clone()
    for i in chosen.nonzero().squeeze(1).tolist():
        top, left, h, w = boxes[i].tolist()
        expected[i, :, top : top + h, left : left + w] = 0.0
    assert torch.equal(filled, expected)
    assert torch.equal(filled[~chosen], images[~chosen]) and not torch.equal(filled[chosen], images[chosen])


def test_resize_matches_opencv_bilinear_within_a_grey_level():
    import cv2

    from nla.data.batch_augment import resize_normalize

    images = torch.randint(0, 256, (4, 20, 30, 3), dtype=torch.uint8)
    for size in (20, 48, 12):  # same, up, down
        ours = resize_normalize(images.permute(0, 3, 1, 2), size, MEAN, STD)
        opencv = (
            torch.stack(
                [torch.from_numpy(cv2.resize(i.numpy(), (size, size), interpolation=cv2.INTER_LINEAR)) for i in images]
            )
            .permute(0, 3, 1, 2)
            .float()
        )
        reference = (opencv / 255 - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
        assert ours.shape == (4, 3, size, size)
        # OpenCV rounds the resized uint8 image; ours keeps the float: at most one grey level apart.
        assert (ours - reference).abs().max().item() <= 1.01 / (255 * min(STD))
