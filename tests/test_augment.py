"""Batched K-view augmentation against torchvision's reference transforms."""

import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import RandomResizedCrop

from rrdist.data.augment import (KViewAugment, adjust_brightness, adjust_contrast, adjust_hue,
                                 adjust_saturation, grayscale, view_generator)

CPU = torch.device("cpu")


def images(n=6, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g)


@pytest.mark.parametrize("ours,theirs,lo,hi", [
    (adjust_brightness, TF.adjust_brightness, 0.2, 1.8),
    (adjust_contrast, TF.adjust_contrast, 0.2, 1.8),
    (adjust_saturation, TF.adjust_saturation, 0.2, 1.8),
    (adjust_hue, TF.adjust_hue, -0.5, 0.5),
])
def test_colour_operations_match_torchvision(ours, theirs, lo, hi):
    x = images(8)
    factors = lo + (hi - lo) * torch.rand(8, generator=torch.Generator().manual_seed(3))
    got = ours(x.clone(), factors)
    want = torch.stack([theirs(x[i], float(factors[i])) for i in range(8)])
    assert torch.allclose(got, want, atol=2e-5), (got - want).abs().max()


def test_hue_handles_gray_and_saturated_pixels():
    x = torch.tensor([[0.5, 0.5, 0.5], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0],
                      [1.0, 1.0, 0.0], [0.2, 0.9, 0.9]]).T.reshape(1, 3, 2, 3).repeat(3, 1, 1, 1)
    shifts = torch.tensor([0.0, 0.25, -0.4])
    want = torch.stack([TF.adjust_hue(x[i], float(shifts[i])) for i in range(3)])
    assert torch.allclose(adjust_hue(x, shifts), want, atol=1e-6)


def test_grayscale_matches_torchvision():
    x = images(4)
    assert torch.allclose(grayscale(x), TF.rgb_to_grayscale(x), atol=1e-6)


def test_crop_resize_flip_match_torchvision_resized_crop():
    aug = KViewAugment(32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    x = images(1, 32)
    for top, left, h, w, flip in [(0, 0, 32, 32, False), (3, 5, 20, 12, False), (10, 1, 9, 17, True),
                                  (0, 16, 32, 16, True), (7, 7, 4, 5, False)]:
        p = aug.sample(1, 32, 32, view_generator(0, CPU), CPU)
        p.top, p.left = torch.tensor([float(top)]), torch.tensor([float(left)])
        p.height, p.width, p.flip = torch.tensor([float(h)]), torch.tensor([float(w)]), torch.tensor([flip])
        got = torch.nn.functional.grid_sample(x, aug.crop_grid(p, 32, 32), mode="bilinear",
                                              padding_mode="border", align_corners=False)[0]
        want = TF.resized_crop(x[0], top, left, h, w, [32, 32], antialias=False)
        if flip:
            want = TF.horizontal_flip(want)
        # torchvision clamps at the crop's edge, we read the pixel beyond it: compare where a
        # sample lies inside the crop (all pixels when the crop is the image).
        u = torch.arange(32.0)
        src_x = left + (u + 0.5) * w / 32 - 0.5
        src_y = top + (u + 0.5) * h / 32 - 0.5
        in_x = (src_x >= left) & (src_x <= left + w - 1)
        in_y = (src_y >= top) & (src_y <= top + h - 1)
        if flip:
            in_x = in_x.flip(0)
        mask = in_y[:, None] & in_x[None, :]
        assert mask.sum() > 0
        assert torch.allclose(got[:, mask], want[:, mask], atol=1e-5), (top, left, h, w, flip)


def test_crop_parameters_follow_torchvision_distribution():
    n = 20000
    aug = KViewAugment(32, (0.0,) * 3, (1.0,) * 3)
    p = aug.sample(n, 32, 32, view_generator(1, CPU), CPU)
    torch.manual_seed(1)
    ref = torch.tensor([RandomResizedCrop.get_params(torch.empty(3, 32, 32), [0.08, 1.0], [3 / 4, 4 / 3])
                        for _ in range(n)], dtype=torch.float32)
    ours = torch.stack([p.top, p.left, p.height, p.width], 1)
    for a, b in ((ours, ref),):
        area_a, area_b = a[:, 2] * a[:, 3] / 1024, b[:, 2] * b[:, 3] / 1024
        assert abs(area_a.mean() - area_b.mean()) < 0.01
        for q in (0.1, 0.5, 0.9):
            assert abs(area_a.quantile(q) - area_b.quantile(q)) < 0.02
        ratio_a, ratio_b = torch.log(a[:, 3] / a[:, 2]), torch.log(b[:, 3] / b[:, 2])
        assert abs(ratio_a.mean() - ratio_b.mean()) < 0.02
        assert abs(ratio_a.std() - ratio_b.std()) < 0.02
    # every crop lies inside the image, within the allowed scale (up to rounding)
    assert bool(((p.top >= 0) & (p.left >= 0) & (p.top + p.height <= 32) & (p.left + p.width <= 32)).all())
    assert area_a.min() >= 0.08 * 0.8 and area_a.max() <= 1.0


def test_random_rates_and_ranges():
    n = 40000
    aug = KViewAugment(32, (0.0,) * 3, (1.0,) * 3)
    p = aug.sample(n, 32, 32, view_generator(2, CPU), CPU)
    assert abs(p.flip.float().mean() - 0.5) < 0.01
    assert abs(p.jitter.float().mean() - 0.8) < 0.01
    assert abs(p.gray.float().mean() - 0.2) < 0.01
    for col, (lo, hi) in enumerate([(0.2, 1.8)] * 3 + [(-0.2, 0.2)]):
        f = p.factors[:, col]
        assert f.min() >= lo and f.max() <= hi
        assert f.min() < lo + 0.01 and f.max() > hi - 0.01  # the whole range is used
        assert abs(f.mean() - (lo + hi) / 2) < 0.01
    # each jitter operation is equally likely at each position
    for step in range(4):
        freq = torch.bincount(p.order[:, step], minlength=4).float() / n
        assert torch.allclose(freq, torch.full((4,), 0.25), atol=0.01)
    assert bool((p.order.sort(1).values == torch.arange(4)).all())


def test_applied_views_show_the_flip_and_gray_rates():
    # Left half dark, right half bright, colourful: a full-image crop makes flips visible.
    img = torch.zeros(1, 32, 32, 3, dtype=torch.uint8)
    img[:, :, 16:] = torch.tensor([200, 40, 90], dtype=torch.uint8)
    aug = KViewAugment(32, (0.0,) * 3, (1.0,) * 3, scale=(1.0, 1.0), ratio=(1.0, 1.0), jitter_p=0.0)
    views = aug(img, 4000, view_generator(3, CPU))
    flipped = views[:, :, :, :8].mean((1, 2, 3)) > views[:, :, :, 24:].mean((1, 2, 3))
    assert abs(flipped.float().mean() - 0.5) < 0.03
    gray = (views[:, 0] == views[:, 1]).all(-1).all(-1) & (views[:, 1] == views[:, 2]).all(-1).all(-1)
    assert abs(gray.float().mean() - 0.2) < 0.03


def test_views_are_view_major_and_normalised():
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    aug = KViewAugment(32, mean, std, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, gray_p=0.0)
    imgs = torch.randint(0, 256, (5, 32, 32, 3), dtype=torch.uint8)
    views = aug(imgs, 3, view_generator(0, CPU))
    assert views.shape == (15, 3, 32, 32)
    expected = (imgs.permute(0, 3, 1, 2).float() / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    for k in range(3):
        assert torch.allclose(views[k * 5:(k + 1) * 5], expected, atol=1e-5)


def test_same_seed_same_views_bit_identical():
    imgs = torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8)
    aug = KViewAugment(32, (0.5,) * 3, (0.25,) * 3)
    a = aug(imgs, 4, view_generator(11, CPU))
    b = aug(imgs, 4, view_generator(11, CPU))
    c = aug(imgs, 4, view_generator(12, CPU))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert math.isfinite(float(a.abs().max()))


def test_indexed_and_masked_colour_paths_agree():
    aug = KViewAugment(32, (0.0,) * 3, (1.0,) * 3)
    x = images(300, 16, seed=5)
    p = aug.sample(300, 16, 16, view_generator(4, CPU), CPU)
    a = aug.colour(x.clone(), p, indexed=True)
    b = aug.colour(x.clone(), p, indexed=False)
    assert torch.allclose(a, b, atol=1e-6)
    assert not torch.allclose(a, x)  # something was applied


def test_colour_pipeline_matches_torchvision_per_view():
    """One view at a time through torchvision's functional ops, in the sampled order."""
    aug = KViewAugment(32, (0.0,) * 3, (1.0,) * 3)
    x = images(40, 8, seed=6)
    p = aug.sample(40, 8, 8, view_generator(5, CPU), CPU)
    got = aug.colour(x.clone(), p)
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for i in range(40):
        want = x[i]
        if p.jitter[i]:
            for o in p.order[i].tolist():
                want = ops[o](want, float(p.factors[i, o]))
        if p.gray[i]:
            want = TF.rgb_to_grayscale(want, num_output_channels=3)
        assert torch.allclose(got[i], want, atol=3e-5), i


@pytest.mark.parametrize("K,size,out", [(4, 32, 32), (3, 40, 24), (2, 16, 32)])
def test_fused_cpu_kernel_matches_tensor_path(K, size, out):
    """The fused CPU kernel applies the same parameters as the tensor path, to float rounding:
    every branch (flip, jitter in each order, grayscale, crop fallback) on random images, plus
    gray and fully saturated pixels, where the hue conversion has its special cases."""
    g = torch.Generator().manual_seed(size)
    imgs = torch.randint(0, 256, (16, size, size, 3), dtype=torch.uint8, generator=g)
    imgs[0] = 128  # gray everywhere
    imgs[1] = torch.tensor([255, 0, 0], dtype=torch.uint8)  # pure red
    imgs[2, :, :, 1:] = 0
    imgs[3, ::2] = 0  # stripes of black and colour
    aug = KViewAugment(out, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
    p = aug.sample(K * 16, size, size, view_generator(K, CPU), CPU)
    p.jitter[:8] = True  # make sure every order and operation shows up
    fused = aug.apply_fused(imgs, p)
    tensor = aug.apply(imgs, p, K)
    assert fused.shape == tensor.shape == (K * 16, 3, out, out)
    assert (fused - tensor).abs().max() < 1e-4
    assert p.flip.any() and (~p.flip).any() and p.gray.any() and p.jitter.any()


def test_call_uses_the_fused_kernel_on_cpu_and_both_paths_draw_the_same_views():
    imgs = torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8)
    fused = KViewAugment(32, (0.5,) * 3, (0.25,) * 3)
    tensor = KViewAugment(32, (0.5,) * 3, (0.25,) * 3, fused_cpu=False)
    a = fused(imgs, 4, view_generator(7, CPU))
    b = tensor(imgs, 4, view_generator(7, CPU))
    assert not torch.equal(a, b)  # different arithmetic, so not bit-identical ...
    assert torch.allclose(a, b, atol=1e-4)  # ... but the same views
