"""Batched augmentation (harness/data/augment.py): determinism, RandomResizedCrop geometry, flip, AutoAugment equivalence
with torchvision's per-sample AutoAugment, and the deterministic test transform."""

from __future__ import annotations

import copy
from unittest import mock

import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.v2.functional as TF

from harness.core.errors import ConfigError
from harness.core.schema import from_dict
from harness.data import augment as A


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(n: int, side: int, seed: int = 0) -> torch.Tensor:
    """uint8 images with structure (gradients + blocks + noise) so that every AutoAugment op changes them."""
    g = _gen(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, side), torch.linspace(0, 1, side), indexing="ij")
    base = torch.stack([xx, yy, (xx + yy) / 2])[None] * torch.rand((n, 3, 1, 1), generator=g)
    blocks = (torch.rand((n, 3, 4, 4), generator=g) > 0.5).float()
    blocks = torch.nn.functional.interpolate(blocks, size=(side, side), mode="nearest")
    noise = torch.rand((n, 3, side, side), generator=g) * 0.2
    return ((0.5 * base + 0.3 * blocks + noise).clamp(0, 1) * 255).round().to(torch.uint8)


def _ramp(side: int = 256) -> torch.Tensor:
    """Channel 0 = column index, channel 1 = row index, channel 2 = 0 (uint8, side ≤ 256)."""
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    return torch.stack([xx, yy, torch.zeros_like(xx)]).to(torch.uint8)[None]


def _preset(protocol: str, benchmark: str) -> tuple[A.TrainTransform, A.TestTransform]:
    """A protocol's transforms for a benchmark, from datasets/protocols/<protocol>.yaml."""
    from harness.data.protocol import load_protocol
    from harness.data.spec import load_spec

    st = load_protocol(protocol).style(load_spec(benchmark).style, benchmark)
    return copy.deepcopy(st.train), copy.deepcopy(st.test)


def test_same_seed_same_output_and_global_rng_untouched():
    x = _images(12, 64)
    for protocol, dataset in [("pm", "imagenet-r-10"), ("pm", "cifar100-10"), ("pilot", "imagenet-r-10")]:
        train, _ = _preset(protocol, dataset)
        train.size = 48
        state = torch.get_rng_state()
        a = A.train_batch(x, train, _gen(7))
        b = A.train_batch(x, train, _gen(7))
        c = A.train_batch(x, train, _gen(8))
        assert torch.equal(torch.get_rng_state(), state), "the global RNG must not be used"
        assert a.dtype == torch.float32 and a.shape == (12, 3, 48, 48)
        assert 0.0 <= a.min() and a.max() <= 1.0
        assert torch.equal(a, b)
        assert not torch.equal(a, c)


def test_normalisation_is_fused_exactly():
    x = _images(4, 64)
    for train in (A.TrainTransform(size=32, flip=True), A.TrainTransform(size=32, interpolation="bicubic")):
        plain = A.train_batch(x, train, _gen(1))
        norm = A.train_batch(x, train, _gen(1), mean=[0.5, 0.4, 0.3], std=[0.5, 0.2, 0.25])
        ref = (plain - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / torch.tensor([0.5, 0.2, 0.25]).view(1, 3, 1, 1)
        assert torch.allclose(norm, ref, atol=1e-5)
    t = A.TestTransform(resize=48, center_crop=32)
    assert torch.allclose(A.test_batch(x, t, mean=[0.5] * 3, std=[0.5] * 3), A.test_batch(x, t) * 2 - 1, atol=1e-5)


def test_rrc_crop_content_is_the_drawn_box_with_the_expected_area():
    x = _ramp().expand(40, 3, 256, 256).contiguous()
    s, size = 0.25, 64
    t = A.TrainTransform(size=size, scale=[s, s], ratio=[1.0, 1.0])
    boxes = A.draw_crop_boxes(40, 256, 256, t.scale, t.ratio, _gen(3))  # what train_batch draws from the same seed
    top, left, h, w = boxes.double().unbind(1)
    assert torch.all(w == 128) and torch.all(h == 128)  # round(sqrt(0.25 · 256²))
    assert torch.allclose(h * w / 256**2, torch.full((40,), s, dtype=torch.float64))
    assert len(set(left.tolist())) > 10 and len(set(top.tolist())) > 10  # positions vary
    # output pixel k samples input coordinate left + (k + 0.5)·w/size − 0.5; a ramp reproduces it (a symmetric
    # filter keeps a linear ramp), except where the kernel meets the box edge
    k = torch.arange(size, dtype=torch.float64) + 0.5
    want_x = (left[:, None] + k[None] * (w / size)[:, None] - 0.5)[:, None, :].expand(-1, size, -1)
    want_y = (top[:, None] + k[None] * (h / size)[:, None] - 0.5)[:, :, None].expand(-1, -1, size)
    cpu = A.train_batch(x, t, _gen(3)).double() * 255  # CPU path: antialiased uint8 resize, rounded
    inner = (slice(None), slice(2, -2), slice(2, -2))
    assert (cpu[:, 0] - want_x)[inner].abs().max() <= 0.5 + 1e-4
    assert (cpu[:, 1] - want_y)[inner].abs().max() <= 0.5 + 1e-4
    batched = A.resized_crop_batch(x.float(), boxes, size, "bilinear").double()  # CUDA path, run on CPU here
    assert torch.allclose(batched[:, 0], want_x, atol=1e-3) and torch.allclose(batched[:, 1], want_y, atol=1e-3)
    # and the box can be read back from the content alone
    row = batched[:, 0, 0]
    assert torch.allclose((row[:, -1] - row[:, 0]) * size / (size - 1), w, atol=1e-2)


def test_rrc_fallback_is_the_central_crop_clamped_to_the_ratio():
    boxes = A.draw_crop_boxes(5, 256, 256, [1.0, 1.0], [2.0, 2.0], _gen(0))  # never fits → fallback
    assert boxes.tolist() == [[64, 0, 128, 256]] * 5


def test_rrc_box_statistics_match_torchvision():
    n = 3000
    ours = A.draw_crop_boxes(n, 256, 256, [0.08, 1.0], [3 / 4, 4 / 3], _gen(1)).double()
    with torch.random.fork_rng():
        torch.manual_seed(1)
        img = torch.zeros(3, 256, 256)
        ref = torch.tensor([T.RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(n)]).double()
    area = lambda b: b[:, 2] * b[:, 3] / 256**2  # noqa: E731
    ours, ref = torch.cat([ours, area(ours)[:, None]], 1), torch.cat([ref, area(ref)[:, None]], 1)
    for col in range(5):  # top, left, h, w, area fraction: means agree within a few standard errors
        se = (ours[:, col].std() ** 2 / n + ref[:, col].std() ** 2 / n).sqrt()
        assert abs(ours[:, col].mean() - ref[:, col].mean()) < 4 * se
    assert 0.079 <= ours[:, 4].min() and ours[:, 4].max() <= 1.0


def test_cpu_crop_is_torchvision_resized_crop_exactly():
    x = _images(16, 64)
    boxes = A.draw_crop_boxes(16, 64, 64, [0.3, 1.0], [3 / 4, 4 / 3], _gen(2))
    flip = torch.arange(16) % 2 == 0
    for mode in ("bilinear", "bicubic"):
        ours = A.resized_crop_per_sample(x, boxes, 48, mode, flip)
        for i in range(16):
            ref = TF.resized_crop(x[i], *boxes[i].tolist(), [48, 48], interpolation=T.InterpolationMode(mode), antialias=True)
            assert torch.equal(ours[i], ref.flip(-1) if flip[i] else ref)


def test_batched_crop_matches_torchvision_crop_then_resize_in_the_interior():
    x = _images(16, 64).float() / 255
    boxes = A.draw_crop_boxes(16, 64, 64, [0.3, 1.0], [3 / 4, 4 / 3], _gen(2))
    for mode, interp in [("bilinear", T.InterpolationMode.BILINEAR), ("bicubic", T.InterpolationMode.BICUBIC)]:
        ours = A.resized_crop_batch(x, boxes, 48, mode)
        ref = torch.stack(
            [TF.resized_crop(x[i], *boxes[i].tolist(), [48, 48], interpolation=interp, antialias=False) for i in range(16)]
        )
        # only the outermost pixels differ (torchvision replicates the box edge, we read the true neighbours)
        assert torch.allclose(ours[..., 3:-3, 3:-3], ref[..., 3:-3, 3:-3], atol=1e-5)


@pytest.mark.parametrize("interp", ["bilinear", "bicubic"])
def test_flip_reverses_width_on_about_half_the_samples(interp):
    n = 400
    x = _ramp(64).expand(n, 3, 64, 64).contiguous()
    plain = A.train_batch(x, A.TrainTransform(size=32, flip=False, interpolation=interp), _gen(5))
    flipped = A.train_batch(x, A.TrainTransform(size=32, flip=True, interpolation=interp), _gen(5))  # flips drawn last
    is_flipped = torch.tensor([torch.equal(flipped[i], plain[i].flip(-1)) for i in range(n)])
    is_same = torch.tensor([torch.equal(flipped[i], plain[i]) for i in range(n)])
    assert torch.all(is_flipped ^ is_same)
    assert 150 < int(is_flipped.sum()) < 250
    # on a column ramp a flipped sample decreases along the width, an unflipped one increases
    i, j = int(is_flipped.nonzero()[0]), int(is_same.nonzero()[0])
    assert torch.all(flipped[i, 0, :, 1:] <= flipped[i, 0, :, :-1]) and torch.all(flipped[j, 0, :, 1:] >= flipped[j, 0, :, :-1])
    assert flipped[i, 0, 0, 0] > flipped[i, 0, 0, -1] and flipped[j, 0, 0, 0] < flipped[j, 0, 0, -1]
    # the batched (CUDA) kernel mirrors its sampling map: exact for bicubic, float32 rounding for roi_align
    boxes = A.draw_crop_boxes(n, 64, 64, [0.08, 1.0], [3 / 4, 4 / 3], _gen(6))
    mirror = torch.arange(n) % 2 == 1
    a = A.resized_crop_batch(x.float(), boxes, 32, interp)
    b = A.resized_crop_batch(x.float(), boxes, 32, interp, mirror)
    assert torch.equal(a[~mirror], b[~mirror])
    assert (a[mirror].flip(-1) - b[mirror]).abs().max() <= (0.0 if interp == "bicubic" else 2e-3)  # 0..255 scale


@pytest.mark.parametrize("policy,interp", [("imagenet", "nearest"), ("cifar10", "bilinear")])
def test_autoaugment_batched_equals_torchvision_per_sample(policy, interp):
    n = 100
    x = _images(n, 32, seed=1)
    draw = A.draw_autoaugment(n, policy, _gen(11))
    ours = A.autoaugment_batch(x, draw, policy, interp)
    ref_aa = T.AutoAugment(T.AutoAugmentPolicy(policy), interpolation=T.InterpolationMode(interp))
    changed = 0
    for i in range(n):
        params = (int(draw.policy_id[i]), draw.probs[i], draw.signs[i])
        with mock.patch.object(T.AutoAugment, "get_params", return_value=params):
            ref = ref_aa(x[i])
        assert torch.equal(ours[i], ref), f"sample {i}: sub-policy {params[0]} differs from torchvision"
        changed += int(not torch.equal(ours[i], x[i]))
    assert changed > n // 3
    assert len(set(draw.policy_id.tolist())) == 25


def test_autoaugment_sub_policies_are_uniform():
    draw = A.draw_autoaugment(25_000, "imagenet", _gen(0))
    counts = torch.bincount(draw.policy_id, minlength=25)
    assert counts.numel() == 25 and counts.min() > 850 and counts.max() < 1150  # expected 1000 ± 31
    assert abs(draw.probs.mean().item() - 0.5) < 0.01 and abs(draw.signs.float().mean().item() - 0.5) < 0.01


def test_test_batch_resize_256_center_crop_224_is_the_central_crop():
    x = _images(4, 256)
    out = A.test_batch(x, A.TestTransform(resize=256, center_crop=224))
    assert torch.equal(out, x[..., 16:240, 16:240].float() / 255)


def test_test_batch_cifar_resize_matches_torchvision():
    x = _images(6, 32)
    out = A.test_batch(x, A.TestTransform(resize=224, interpolation="bicubic"))
    assert out.shape == (6, 3, 224, 224)
    ref_float = TF.resize(x.float() / 255, [224, 224], interpolation=T.InterpolationMode.BICUBIC, antialias=True)
    assert torch.allclose(out, ref_float.clamp(0, 1), atol=1e-5)
    ref_u8 = TF.resize(x, [224, 224], interpolation=T.InterpolationMode.BICUBIC, antialias=True).float() / 255
    # torchvision's uint8 path rounds to uint8 and uses fixed-point weights: a few levels apart at most
    assert (out - ref_u8).abs().max() <= 5 / 255 and (out - ref_u8).abs().mean() < 1 / 255


def test_test_batch_downscale_is_antialiased_like_torchvision():
    x = _images(2, 256)
    out = A.test_batch(x, A.TestTransform(resize=64, interpolation="bilinear"))
    ref = TF.resize(x.float() / 255, [64, 64], interpolation=T.InterpolationMode.BILINEAR, antialias=True)
    assert torch.allclose(out, ref, atol=1e-5)


def test_config_loading_and_validation():
    t = from_dict(A.TrainTransform, {"autoaugment": "cifar10", "scale": [0.05, 1], "flip": True}, "aug.train")
    assert t.scale == [0.05, 1.0] and t.flip
    with pytest.raises(ConfigError, match=r"aug.train.scale"):
        from_dict(A.TrainTransform, {"scale": [0.5, 0.1]}, "aug.train")
    with pytest.raises(ConfigError, match=r"valid: none, imagenet, cifar10"):
        from_dict(A.TrainTransform, {"autoaugment": "svhn"}, "aug.train")
    with pytest.raises(ConfigError, match=r"center_crop"):
        from_dict(A.TestTransform, {"resize": 200, "center_crop": 224}, "aug.test")
    for protocol in ("pm", "pilot", "inflora"):
        for dataset, stored in [("cifar100-10", 32), ("imagenet-r-10", 256), ("cub200-10", 256)]:
            train, test = _preset(protocol, dataset)
            assert A.output_size(train, test, stored) == 224
    with pytest.raises(ConfigError, match="train images are 224"):
        A.output_size(A.TrainTransform(), A.TestTransform(), stored=256)


def _edge_cases(x: torch.Tensor) -> torch.Tensor:
    """`x` with some samples made degenerate for the histogram ops: constant images (AutoContrast's flat range,
    Equalize's step 0), two-level images and one constant channel."""
    x = x.clone()
    x[::9] = 77
    x[4::9] = (x[4::9] > 127).to(torch.uint8) * 255
    x[5::9, 1] = 200
    return x


@pytest.mark.parametrize(
    "policy,interp,side,channels",
    [("imagenet", "nearest", 32, 3), ("cifar10", "bilinear", 32, 3), ("imagenet", "bilinear", 45, 3), ("cifar10", "nearest", 20, 1)],
)
def test_whole_batch_autoaugment_equals_torchvision_per_sample(policy, interp, side, channels):
    """The whole-batch path (harness/data/autoaugment.py, the path off the CPU) gives torchvision's AutoAugment pixels
    exactly, for every op of both policies, every magnitude bin drawn and both signs, on CPU (grayscale images too:
    Color is then the identity and Contrast uses the plain mean, as in torchvision)."""
    n = 300
    x = _edge_cases(_images(n, side, seed=2))[:, :channels].contiguous()
    draw = A.draw_autoaugment(n, policy, _gen(5))
    ours = A.autoaugment_batch(x, draw, policy, interp, path="batched")
    ref_aa = T.AutoAugment(T.AutoAugmentPolicy(policy), interpolation=T.InterpolationMode(interp))
    applied: set[str] = set()
    for i in range(n):
        params = (int(draw.policy_id[i]), draw.probs[i], draw.signs[i])
        with mock.patch.object(T.AutoAugment, "get_params", return_value=params):
            ref = ref_aa(x[i])
        sub = ref_aa.policies[params[0]]
        applied |= {sub[k][0] for k in range(2) if float(draw.probs[i][k]) <= sub[k][1]}
        assert torch.equal(ours[i], ref), f"sample {i}: sub-policy {sub} differs from torchvision"
    assert applied == {op for sub in ref_aa.policies for op, _, _ in sub}  # every op of the policy was exercised
    assert torch.equal(ours, A.autoaugment_batch(x, draw, policy, interp, path="grouped"))


def test_autoaugment_path_choice_keeps_cpu_pixels():
    """train_batch's AutoAugment path: grouped and batched give the same CPU output; auto is grouped on CPU."""
    x = _images(24, 40, seed=3)
    for protocol, dataset in [("pm", "imagenet-r-10"), ("pm", "cifar100-10")]:
        train, _ = _preset(protocol, dataset)
        train.size = 32
        runs = {p: A.train_batch(x, train, _gen(9), autoaugment_path=p) for p in ("auto", "grouped", "batched")}
        assert torch.equal(runs["auto"], runs["grouped"]) and torch.equal(runs["grouped"], runs["batched"])
    with mock.patch("harness.data.autoaugment.apply", side_effect=AssertionError("batched path used on CPU")):
        A.autoaugment_batch(x, A.draw_autoaugment(24, "imagenet", _gen(0)), "imagenet")
    with pytest.raises(ValueError, match="grouped, batched"):
        A.train_batch(x, A.TrainTransform(autoaugment="imagenet", size=32), _gen(0), autoaugment_path="fast")


def test_whole_batch_per_pixel_maths_is_torchvision_exactly_on_all_inputs():
    """Exhaustive checks of the two places where float32 rounding could differ from torchvision unnoticed on random
    images: the grayscale of every RGB triple (Color, Contrast) and AutoContrast's table for every (min, max) pair."""
    from torchvision.transforms import _functional_tensor as FT

    from harness.data import autoaugment as AB

    v = torch.arange(256, dtype=torch.uint8)
    cube = torch.stack(torch.meshgrid(v, v, v, indexing="ij")).reshape(1, 3, 256, 65536)  # every (r, g, b)
    assert torch.equal(AB._grayscale(cube), FT.rgb_to_grayscale(cube))
    lo, hi = torch.triu_indices(256, 256)  # every 0 <= min <= max <= 255
    rows = torch.minimum(torch.maximum(v.long()[None], lo[:, None]), hi[:, None]).to(torch.uint8)  # values min..max
    x = rows.view(-1, 1, 1, 256)
    prm = torch.zeros((x.shape[0], AB._K))
    ours = AB._table(AB._AUTOCONTRAST, x, x.view(-1, 1, 256).long(), prm).view(-1, 1, 1, 256)
    assert torch.equal(ours.gather(3, x.long()), FT.autocontrast(x))


def test_autoaugment_ops_benchmark_runs_tiny():
    """benchmarks/autoaugment_ops.py on a tiny batch: the script cannot rot, and its counts say what they should."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "autoaugment_ops.py"
    spec = importlib.util.spec_from_file_location("autoaugment_ops", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(["--batch", "32", "--size", "24", "--reps", "1"])
    for policy in ("imagenet", "cifar10"):
        grouped, batched = out[policy, "grouped"], out[policy, "batched"]
        assert grouped["groups"] == batched["groups"] > 10 and grouped["ms"] > 0 and batched["ms"] > 0
        assert batched["ops"] < grouped["ops"]
