"""Sparse-RS: the threat models hold (k pixels, a patch, a frame, [0, 1]), a batch equals one image at a
time, the exhaustive one-pixel check finds a planted weakness and proves its absence, targeted mode,
queries stop at success."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fragility.attacks.sparse_rs import (
    SparseRS,
    corner_colours,
    frame_mask,
    p_schedule_patch,
    p_schedule_pixels,
    walk_order,
)
from fragility.errors import ConfigError
from fragility.models.wrapper import Classifier
from fragility.rng import SampleRNG

MODES = [
    {"mode": "pixels", "k": 1},
    {"mode": "pixels", "k": 3},
    {"mode": "patch", "size": 3},
    {"mode": "frame", "width": 1},
    {"mode": "pixels", "k": 1, "exhaustive": True},
]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class PlantedPixelNet(nn.Module):
    """Two classes on 3x8x8 images. Class 1 wins only when pixel (5, 3) is exactly the corner colour
    (1, 0, 1) and pixel (0, 0) is white. An image with a white (0, 0) has a single one-pixel weakness
    among its 64 x 8 corner candidates; any other image needs two pixels."""

    def __init__(self) -> None:
        super().__init__()

    def forward(self, x):
        x = x * 0.25 + 0.5  # undo the wrapper's normalization
        p = x[:, :, 5, 3]
        l1 = 4 * (p[:, 0] + (1 - p[:, 1]) + p[:, 2]) - 11  # 1 at (1, 0, 1); <= -1 if any channel is off by 0.5
        l1 = l1 + 10 * (x[:, :, 0, 0].mean(1) - 1)  # the lock: 0 when (0, 0) is white, <= -5 when grey
        return torch.stack([torch.full_like(l1, 0.5), l1], 1)


@pytest.fixture
def planted():
    return Classifier(
        PlantedPixelNet(), mean=[0.5] * 3, std=[0.25] * 3, input_size=(3, 8, 8), class_names=["a", "b"], name="planted"
    )


def changed(adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool: pixels that differ in any channel."""
    return (adv != x).any(1)


@pytest.mark.parametrize("kw", MODES, ids=lambda kw: "-".join(str(v) for v in kw.values()))
def test_threat_model_and_range(kw, tiny_model, tiny_batch):
    x, y = tiny_batch
    res = SparseRS(queries=60, **kw)(tiny_model, x, y)
    assert res.adv.min() >= 0 and res.adv.max() <= 1
    ch = changed(res.adv, x)
    if kw["mode"] == "pixels":
        assert (ch.flatten(1).sum(1) == kw["k"]).all()  # exactly k: a corner colour that equals the pixel is never drawn
        corners = corner_colours(3, "cpu")
        new = res.adv.permute(0, 2, 3, 1)[ch]  # (N*k, 3)
        assert (new[:, None] == corners[None]).all(-1).any(1).all()  # every changed pixel is a cube corner
    elif kw["mode"] == "patch":
        s = kw["size"]
        for m in ch:
            r, c = m.nonzero(as_tuple=True)
            assert len(r) and int(r.max() - r.min()) < s and int(c.max() - c.min()) < s
    else:
        assert not (ch & ~frame_mask(8, 8, kw["width"], "cpu")).any()
        assert ch.any()


@pytest.mark.parametrize("mode", ["pixels", "patch", "frame"])
def test_project_enforces_threat_model(mode):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 8, 8, generator=g)
    adv = torch.rand(4, 3, 8, 8, generator=g)  # changes everywhere
    out = SparseRS(mode=mode, k=2, size=3, width=1).project(adv, x)
    ch = changed(out, x)
    if mode == "pixels":
        assert (ch.flatten(1).sum(1) == 2).all()
    elif mode == "patch":
        assert (ch.flatten(1).sum(1) == 9).all()
        for m in ch:
            r, c = m.nonzero(as_tuple=True)
            assert int(r.max() - r.min()) == 2 and int(c.max() - c.min()) == 2
    else:
        assert torch.equal(ch, frame_mask(8, 8, 1, "cpu").expand(4, 8, 8))
    assert torch.equal(out[ch[:, None].expand_as(out)], adv[ch[:, None].expand_as(adv)])  # kept pixels keep their values


@pytest.mark.parametrize("kw", MODES, ids=lambda kw: "-".join(str(v) for v in kw.values()))
def test_batch_equals_one_at_a_time(kw, tiny_model, tiny_batch):
    x, y = tiny_batch
    x, y = x[:6], y[:6]
    attack = SparseRS(queries=80, **kw)
    whole = attack(tiny_model, x, y)
    for i in range(len(x)):
        one = attack(tiny_model, x[i : i + 1], y[i : i + 1])
        assert torch.equal(one.adv[0], whole.adv[i])
        assert bool(one.success[0]) == bool(whole.success[i])
        assert int(one.queries[0]) == int(whole.queries[i])


def test_seed_changes_the_search(tiny_model, tiny_batch):
    x, y = tiny_batch
    a = SparseRS(mode="pixels", k=3, queries=30, seed=0)(tiny_model, x, y)
    b = SparseRS(mode="pixels", k=3, queries=30, seed=1)(tiny_model, x, y)
    again = SparseRS(mode="pixels", k=3, queries=30, seed=0)(tiny_model, x, y)
    assert torch.equal(a.adv, again.adv) and not torch.equal(a.adv, b.adv)


def grey(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return (0.5 + 0.05 * torch.randn(n, 3, 8, 8, generator=g)).clamp(0, 1)


@pytest.mark.parametrize("order", ["guided", "random"])
def test_exhaustive_finds_the_planted_pixel(order, planted):
    x = grey(5)
    x[:, :, 0, 0] = 1.0  # unlock: a white corner pixel, so also one no-op candidate (skipped)
    y = torch.zeros(5, dtype=torch.long)
    assert (planted(x).argmax(1) == 0).all()
    attack = SparseRS(mode="pixels", k=1, exhaustive=True, order=order)
    assert attack.params()["exhaustive"] is True and "queries" not in attack.params()
    assert attack.params()["order"] == order
    res = attack(planted, x, y)
    assert res.success.all()
    ch = changed(res.adv, x)
    assert (ch.flatten(1).sum(1) == 1).all() and ch[:, 5, 3].all()
    assert torch.equal(res.adv[:, :, 5, 3], torch.tensor([1.0, 0.0, 1.0]).expand(5, 3))
    assert (res.queries <= 64 * 8 - 1).all()


class Recorder(nn.Module):
    """A linear two-class net that never changes its mind (class 0 by a wide margin) and keeps every
    image it is asked about, in order."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight, self.seen = weight, []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        s = (x * self.weight).flatten(1).sum(1)
        return torch.stack([torch.full_like(s, 100.0), s], 1)


def test_guided_order_probes_every_position_then_follows_the_margin():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(1, 3, 8, 8, generator=g)
    net = Recorder(weight)
    model = Classifier(net, mean=[0.0] * 3, std=[1.0] * 3, input_size=(3, 8, 8), class_names=["a", "b"], name="rec")
    x = torch.rand(1, 3, 8, 8, generator=g) * 0.8 + 0.1  # no pixel is a corner
    res = SparseRS(mode="pixels", k=1, queries=64 + 14)(model, x, torch.zeros(1, dtype=torch.long))
    assert not res.success.any() and int(res.queries[0]) == 64 + 14
    asked = torch.cat(net.seen)[: 64 + 14]  # the attack's queries (then the base class's final check)
    where = (asked != x).any(1).flatten(1)  # (queries, 64): the one changed position of each
    assert (where.sum(1) == 1).all()
    pos = where.float().argmax(1)
    colour = asked.flatten(2)[torch.arange(len(asked)), :, pos]  # (queries, 3)
    far = 1 - x.flatten(2)[0].t().round()  # (64, 3): each position's farthest corner
    # phase 1: every position once, with its far corner
    assert sorted(pos[:64].tolist()) == list(range(64))
    assert torch.equal(colour[:64], far[pos[:64]])
    # phase 2: the other 7 corners of the position whose probe raised class 1's logit most (the
    # lowest margin), then of the next one
    gain = ((far.t().reshape(1, 3, 8, 8) - x) * weight).flatten(2).sum(1)[0]  # probe's change of the logit
    first, second = gain.argsort(descending=True)[:2].tolist()
    assert pos[64:71].tolist() == [first] * 7 and pos[71:78].tolist() == [second] * 7
    assert len({tuple(c) for c in colour[64:71].tolist()} | {tuple(far[first].tolist())}) == 8


@pytest.mark.parametrize("rank", ["signed", "spread"])
@pytest.mark.parametrize("colours", ["index", "far"])
def test_walk_order_second_phase_rules(rank, colours):
    """The rules that benchmarks/peers/k1_order_study.py compares: positions by the probe's loss
    (signed) or by its distance from the median probe (spread); a position's corners by index or
    nearest the far corner first. Every candidate once, the clean pixel's own colour last."""
    x = torch.full((1, 3, 1, 5), 0.3)
    x[0, :, 0, 4] = 1.0  # a corner pixel: its own colour (white) is a no-op candidate
    probe_loss = torch.tensor([0.0, -2.0, 5.0, 1.2, 0.5])  # by position; median 0.5, no ties
    asked = []

    def probe(cands):
        asked.append(cands.clone())
        return probe_loss[cands // 8]

    order = walk_order("guided", x, SampleRNG(torch.tensor([7])), probe, rank=rank, colours=colours)[0]
    assert sorted(order.tolist()) == list(range(40)) and torch.equal(order[:5], asked[0][0])
    assert (order[:5] % 8 == torch.tensor([7, 7, 7, 7, 0])[order[:5] // 8]).all()  # far: 1 - round(x)
    by_position = [int(p) for p in order[5:-1] // 8]
    expect = [1, 0, 4, 3, 2] if rank == "signed" else [2, 1, 3, 0, 4]
    assert by_position == [p for p in expect for _ in range(7 if p != 4 else 6)]
    assert int(order[-1]) == 4 * 8 + 7  # white at the white pixel: last
    first_colours = [int(c) for c in order[5:12] % 8]  # the first position's 7 other corners
    if colours == "index":
        assert first_colours == [0, 1, 2, 3, 4, 5, 6]
    else:  # far = 7 (white): one bit away (6, 5, 3), then two (4, 2, 1), then black
        assert first_colours == [3, 5, 6, 1, 2, 4, 0]


def test_exhaustive_failure_is_complete(planted):
    """Locked images (grey (0, 0)) need two pixels: the check proves that one is not enough by
    trying all 64 x 8 candidates, whatever the query budget says."""
    x = grey(2)
    x[:, :, 3, 3] = torch.tensor([1.0, 0.0, 1.0])  # a pixel that is a corner already: one no-op candidate
    y = torch.zeros(2, dtype=torch.long)
    res = SparseRS(mode="pixels", k=1, exhaustive=True, queries=10)(planted, x, y)
    assert not res.success.any()
    assert (res.queries == 64 * 8 - 1).all()  # every (position, corner) pair but the no-op


@pytest.mark.parametrize("order", ["guided", "random"])
def test_k1_walk_finds_it_too_and_stops_early(order, planted):
    x = grey(4)
    x[:, :, 0, 0] = 1.0
    y = torch.zeros(4, dtype=torch.long)
    res = SparseRS(mode="pixels", k=1, queries=512, order=order)(planted, x, y)
    assert res.success.all()  # sampling without replacement: complete within 64 x 8 queries
    assert res.queries.float().mean() < 512
    short = SparseRS(mode="pixels", k=1, queries=20, order=order)(planted, x, y)
    assert (short.queries[~short.success] == 20).all()


@pytest.mark.parametrize("kw", [{"mode": "pixels", "k": 4}, {"mode": "patch", "size": 3}])
def test_targeted(kw, tiny_model, tiny_batch):
    x, y = tiny_batch
    attack = SparseRS(queries=300, targeted=True, **kw)
    res = attack(tiny_model, x, y)
    t = res.targets
    assert t is not None and (t != y).all()
    assert res.success.float().mean() >= 0.5
    with torch.inference_mode():
        pred = tiny_model(res.adv).argmax(1)
    assert torch.equal(pred == t, res.success)  # success means the target class, not just another one
    assert attack.params()["target"] == "other"
    fixed = SparseRS(queries=50, target=3, **kw)(tiny_model, x, y)
    assert (fixed.targets == 3).all()


@pytest.mark.parametrize("kw", MODES[:4], ids=lambda kw: "-".join(str(v) for v in kw.values()))
def test_queries_stop_at_success(kw, tiny_model, tiny_batch):
    x, y = tiny_batch
    budget = 40
    res = SparseRS(queries=budget, **kw)(tiny_model, x, y)
    q, ok = res.queries, res.success
    assert ok.any() and (q >= 1).all() and (q <= budget).all()
    assert (q[~ok] == budget).all()  # failures spend the whole budget, no more
    if kw["k" if "k" in kw else "mode"] != 1:  # one query per step: the count is the step that succeeded
        assert torch.equal(q, res.extras["steps"])
    assert q[ok].float().mean() < budget


def test_settings_refused():
    with pytest.raises(ConfigError, match="order"):
        SparseRS(mode="pixels", k=1, order="raster")
    with pytest.raises(ConfigError, match="exhaustive"):
        SparseRS(mode="pixels", k=3, exhaustive=True)
    with pytest.raises(ConfigError, match="mode"):
        SparseRS(mode="lines")
    with pytest.raises(ConfigError, match="queries"):
        SparseRS(queries=0)


def test_schedules_follow_the_paper():
    assert p_schedule_pixels(0, 10000, 0.3) == pytest.approx(0.3)
    assert p_schedule_pixels(100, 10000, 0.3) == pytest.approx(0.3 / 4)
    assert p_schedule_pixels(9000, 10000, 0.3) == pytest.approx(0.3 / 20)
    assert p_schedule_pixels(10, 1000, 0.3) == pytest.approx(0.3 / 4)  # clock rescaled to 10,000 steps
    assert p_schedule_patch(5, 10000, 0.4) == pytest.approx(0.4)
    assert p_schedule_patch(9000, 10000, 0.4) == pytest.approx(0.4 / 512)
    a = SparseRS(mode="patch", size=4)
    assert a.budget == 4 and a.norm == "l0_patch" and SparseRS().norm == "l0"


class WhiteSpotNet(nn.Module):
    """Class 1 wins once pixel (3, 4) is white in every channel (no grey image has it); the margin
    falls as the pixel whitens, so a search can follow it."""

    def forward(self, x):
        spot = x[:, :, 3, 4].mean(1)
        return torch.stack([torch.zeros_like(spot), 12 * spot - 11], 1)


def test_universal_patch_is_one_patch_for_all_images():
    x, y = grey(6), torch.zeros(6, dtype=torch.long)
    attack = SparseRS(mode="patch", size=3, universal=True, queries=2000)
    assert attack.params()["universal"] is True
    res = attack(WhiteSpotNet(), x, y)
    assert res.success.all()  # the white spot, found once, fools every image
    ch = changed(res.adv, x)
    rows, cols = ch.any(0).any(1).nonzero().flatten(), ch.any(0).any(0).nonzero().flatten()
    assert rows.max() - rows.min() < 3 and cols.max() - cols.min() < 3  # one 3x3 window for all
    window = (slice(None), slice(None), slice(int(rows.min()), int(rows.max()) + 1), slice(int(cols.min()), int(cols.max()) + 1))
    assert (res.adv[window] == res.adv[window][:1]).all()  # the same content on every image
    assert ((res.adv[window] == 0) | (res.adv[window] == 1)).all()  # corner colours
    assert (res.queries == res.queries[0]).all() and 1 < int(res.queries[0]) < 2000  # every step asks every image


def test_universal_frame_is_one_frame_and_leaves_the_inside(tiny_model, tiny_batch):
    x, y = tiny_batch
    res = SparseRS(mode="frame", width=1, universal=True, queries=60)(tiny_model, x, y)
    mask = frame_mask(8, 8, 1, x.device)[0]
    assert torch.equal(res.adv[:, :, ~mask], x[:, :, ~mask])  # the inside of every image untouched
    assert (res.adv[:, :, mask] == res.adv[:1, :, mask]).all()  # one frame, the same on every image
    assert (res.queries == res.queries[0]).all() and (res.queries <= 60).all()


def test_universal_needs_a_patch_or_frame():
    with pytest.raises(ConfigError, match="universal"):
        SparseRS(mode="pixels", k=3, universal=True)


def test_a_budget_the_image_cannot_hold_is_refused_not_clamped(tiny_model, tiny_batch):
    """k=100000 on an 8x8 image ran as k=64 while the record said 100000."""
    from fragility.attacks.onepixel import OnePixel

    x, y = tiny_batch
    h, w = x.shape[-2:]
    cases = [
        (SparseRS(k=h * w + 1, queries=5), rf"k={h * w + 1} is more than the {h * w} pixels"),
        (SparseRS(mode="patch", size=h + 1, queries=5), "does not fit"),
        (SparseRS(mode="frame", width=min(h, w) // 2, queries=5), "makes the frame the whole"),
        (OnePixel(pixels=h * w + 1, popsize=4, maxiter=1), "is more than the"),
    ]
    for attack, match in cases:
        with pytest.raises(ConfigError, match=match):
            attack(tiny_model, x, y)
    assert len(SparseRS(k=h * w, queries=3)(tiny_model, x, y)) == len(x)  # the whole image still fits
