"""Batch augmentation: shifts are crops of the padded image, black padding, flips."""

from __future__ import annotations

import torch


def test_shift_is_a_crop_of_the_padded_image() -> None:
    from admmcompress.data.augment import augment_batch, random_shift

    x = torch.randn(16, 2, 9, 7)
    assert torch.equal(random_shift(x, 0, torch.Generator()), x)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a, b = random_shift(x, 2, g1), random_shift(x, 2, g2)
    assert torch.equal(a, b)  # the generator decides, nothing else
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="replicate")
    for i in range(16):  # each output is one of the 25 crops of its own padded image
        crops = [padded[i, :, r : r + 9, c : c + 7] for r in range(5) for c in range(5)]
        assert any(torch.equal(a[i], crop) for crop in crops)
    flipped = augment_batch(x, 0, True, torch.Generator().manual_seed(0))
    same = [torch.equal(flipped[i], x[i]) for i in range(16)]
    mirrored = [torch.equal(flipped[i], x[i].flip(-1)) for i in range(16)]
    assert all(s or m for s, m in zip(same, mirrored, strict=True)) and any(mirrored)


def test_black_padding_matches_torchvision_random_crop_on_raw_pixels() -> None:
    """pad: black on normalised CIFAR-style data = RandomCrop(padding=4) before normalising."""
    from admmcompress.data import Augment, Split
    from admmcompress.data.augment import random_shift

    mean, std = torch.tensor([0.49, 0.48, 0.45]), torch.tensor([0.25, 0.24, 0.26])
    raw = torch.rand(8, 3, 6, 6)
    norm = (raw - mean[:, None, None]) / std[:, None, None]
    black = tuple((-mean / std).tolist())
    out = random_shift(norm, 2, torch.Generator().manual_seed(1), black)
    padded = torch.nn.functional.pad(raw, (2, 2, 2, 2))  # zeros: black pixels
    for i in range(8):
        crops = [padded[i, :, r : r + 6, c : c + 6] for r in range(5) for c in range(5)]
        want = [(c - mean[:, None, None]) / std[:, None, None] for c in crops]
        assert any(torch.allclose(out[i], w, atol=1e-6) for w in want)
    split = Split(norm, torch.zeros(8, dtype=torch.long), black)
    shift3 = Augment(shift=3, pad="black")
    x, _, n = next(split.train_batches(8, torch.Generator(), None, shift3))
    corners = x[:, :, [0, 0, -1, -1], [0, -1, 0, -1]]  # a 3-pixel shift always shows border
    assert n == 8 and any(torch.allclose(corners[i, :, 0], torch.tensor(black)) for i in range(8))
