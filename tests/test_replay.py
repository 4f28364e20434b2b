"""The activation cache (pass 2 replays pass 1's layer outputs) changes time, never numbers."""

from __future__ import annotations

import tempfile

import pytest
import torch

import gdx
from gdx.labelstats import LabelTracker
from gdx.replay import ActivationCache
from gdx.stats import PointSample

FIELDS = ("iou", "thresholds", "iou_ci", "null_iou", "pvalue", "iqr", "levels", "top_indices", "top_values")


def _run(threshold, cache_bytes, layers=("features",), samples=48, batch_size=6):
    gen, seg = gdx.load_generator("toy"), gdx.load_segmenter("toy")
    run = gdx.DissectionRun(gen, seg, list(layers), samples=samples, batch_size=batch_size, seed=3,
                            threshold=threshold, cache_bytes=cache_bytes)
    levels = run.level_pass()
    counts = run.count_pass(levels)
    return run, run.results(levels, counts)


def _same(a: gdx.Dissection, b: gdx.Dissection) -> None:
    for name in FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        if x is None or y is None:
            assert x is None and y is None, name
            continue
        assert torch.equal(torch.nan_to_num(x, nan=-7.0), torch.nan_to_num(y, nan=-7.0)), name
    assert a.unit_labels == b.unit_labels
    assert a.significant() == b.significant()


@pytest.mark.parametrize("threshold", [0.9, "iqr"])
def test_replayed_run_equals_regenerated_run_bit_for_bit(threshold):
    _, [plain] = _run(threshold, cache_bytes=0)
    run, [replayed] = _run(threshold, cache_bytes=1 << 30)
    _same(plain, replayed)
    assert replayed.pvalue is not None and replayed.iou_ci is not None
    assert run._cache is not None and run._cache.used == 0  # released after the replay


def test_a_cache_too_small_for_the_run_replays_part_and_regenerates_the_rest():
    _, [plain] = _run(0.9, cache_bytes=0)
    gen, seg = gdx.load_generator("toy"), gdx.load_segmenter("toy")
    probe = gdx.DissectionRun(gen, seg, ["features"], samples=48, batch_size=6, seed=3, threshold=0.9)
    two_batches = probe._batch_bytes(6) * 2 + 1
    calls = {"n": 0}
    generate = gen.generate

    def counting(z):
        calls["n"] += 1
        return generate(z)

    gen.generate = counting  # type: ignore[method-assign]
    run = gdx.DissectionRun(gen, seg, ["features"], samples=48, batch_size=6, seed=3, threshold=0.9,
                            cache_bytes=two_batches)
    levels = run.level_pass()
    [partial] = run.results(levels, run.count_pass(levels))
    _same(plain, partial)
    assert calls["n"] == 1 + 7 + 6  # the probe (pass 1's first batch), pass 1, pass 2 for the 6 batches not kept


def test_several_layers_replay_together():
    gen = gdx.load_generator("scene")
    seg = gdx.load_segmenter("scene")
    out = []
    for cache in (0, 1 << 30):
        run = gdx.DissectionRun(gen, seg, ["layer4", "layer5"], samples=24, batch_size=8, seed=1, cache_bytes=cache)
        levels = run.level_pass()
        out.append(run.results(levels, run.count_pass(levels)))
    for a, b in zip(*out):
        _same(a, b)


def test_a_cache_that_cannot_write_turns_itself_off_and_the_run_goes_on(monkeypatch):
    _, [plain] = _run(0.9, cache_bytes=0)

    def no_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tempfile, "TemporaryFile", no_disk)
    run, [result] = _run(0.9, cache_bytes=1 << 30)
    _same(plain, result)
    assert run._cache is not None and not run._cache.enabled


def test_cache_round_trip_is_bit_exact_and_respects_its_budget():
    acts = {"a": torch.randn(3, 4, 5, 5), "b": torch.randn(3, 2, 2, 2, dtype=torch.float64)}
    seg = torch.randint(-1, 150, (3, 2, 8, 8))
    big = torch.randint(-1, 40000, (3, 1, 8, 8))
    cache = ActivationCache(1 << 20)
    assert cache.put(0, 3, acts, seg) and cache.put(3, 6, acts, big)
    for (start, stop), labels in (((0, 3), seg), ((3, 6), big)):
        got = cache.get(start, stop)
        assert got is not None
        back, back_seg = got
        assert back.keys() == acts.keys() and all(torch.equal(back[k], acts[k]) for k in acts)
        assert back["b"].dtype == torch.float64 and torch.equal(back_seg, labels) and back_seg.dtype == torch.int64
    assert cache.get(6, 9) is None and not cache.covers(6, 9)
    tiny = ActivationCache(100)
    assert not tiny.put(0, 3, acts, seg) and not tiny.enabled
    assert not ActivationCache(0).has_room(1)
    cache.close()
    assert cache.get(0, 3) is None


def test_point_sample_knowing_the_run_length_keeps_the_same_points():
    torch.manual_seed(0)
    batches = [torch.randn(7, 5, 8, 8) for _ in range(6)]
    streamed = PointSample(5, (32, 32), size=3000, seed=3)
    known = PointSample(5, (32, 32), size=3000, seed=3, total_samples=42)
    for i, x in enumerate(batches):
        index = torch.arange(7 * i, 7 * i + 7)
        streamed.update(x, index)
        known.update(x, index)
    assert torch.equal(streamed.keys, known.keys) and torch.equal(streamed.values, known.values)


def test_statistics_kept_at_chosen_levels_refuse_to_merge():
    finished = LabelTracker(3, 1, 4, at_level=torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="merge the shards' counts"):
        LabelTracker(3, 5, 4).merge(finished)
    back = LabelTracker(3, 5, 4)
    back.load_state_dict(finished.state_dict())
    assert back.at_level is not None and back.observed.num_levels == 1


@pytest.mark.parametrize("case", ["normal", "ties", "all_equal", "coarse", "tiny", "next_to_a_level", "one_level"])
def test_lookup_table_bucketize_equals_searchsorted(case):
    from gdx.buckets import bucketize

    gen = torch.Generator().manual_seed(1)
    n, U, P, L = 3, 7, 4000, 1 if case == "one_level" else 60
    values = torch.randn(n, U, P, generator=gen)
    levels = torch.sort(torch.randn(U, L, generator=gen), 1).values
    if case == "ties":  # many levels equal, many values equal to them (ReLU-like maps)
        levels[:, 10:40] = 0.0
        values[:, :, :1500] = 0.0
        levels = torch.sort(levels, 1).values
    elif case == "all_equal":
        levels[:] = 0.5
        values[:, :, :100] = 0.5
    elif case == "coarse":
        values, levels = values.round(decimals=1), torch.sort(levels.round(decimals=1), 1).values
    elif case == "tiny":
        values, levels = values * 1e-30, levels * 1e-30
    elif case == "next_to_a_level":  # one float step above a level must count it
        values = torch.nextafter(levels[None, :, 3:4].expand(n, U, P), torch.tensor(9.0)).contiguous()
    expected = torch.searchsorted(levels.expand(n, U, -1).contiguous(), values.contiguous(), right=False)
    assert torch.equal(bucketize(values, levels).long(), expected)
    # the ragged form (pixels of mixed units, as the sparse counting path has them)
    from gdx.buckets import LevelTable

    unit = torch.randint(0, U, (5000,), generator=gen)
    pick = torch.randint(0, n * P, (5000,), generator=gen)
    mixed = values.permute(1, 0, 2).reshape(U, -1)[unit, pick]
    want = expected.permute(1, 0, 2).reshape(U, -1)[unit, pick]
    assert torch.equal(LevelTable(levels).ragged(mixed, unit), want)


def test_a_sweep_at_one_level_sees_the_values_the_counts_were_made_from() -> None:
    """The label statistics' sweep (one level per unit) takes the counting pass's path and cells,
    so its pixels above the chosen level are exactly the counted ones (block and dense paths)."""
    from gdx.stats import LevelCounts

    gen = torch.Generator().manual_seed(11)
    for acts_shape, size in (((4, 24, 8, 8), (64, 64)), ((4, 24, 8, 8), (128, 128)), ((4, 24, 5, 7), (70, 90))):
        acts = torch.randn(*acts_shape, generator=gen)
        seg = torch.randint(0, 5, (acts_shape[0], 1, *size), generator=gen)
        levels = torch.quantile(acts.transpose(0, 1).flatten(1), torch.linspace(0.5, 0.995, 41), dim=1).t()
        counts = LevelCounts(levels.contiguous(), 5)
        counts.update(acts, seg)
        for j in (0, 20, 40):
            one = LevelCounts(levels[:, j : j + 1].contiguous(), 5)
            one.update(acts, seg, path_levels=levels[:, 0])
            assert torch.equal(one.above[:, 0], counts.above[:, j]), (acts_shape, size, j)
            assert torch.equal(one.cooc[:, 0], counts.cooc[:, j]), (acts_shape, size, j)
