"""Latents drawn batch by batch are bit-identical to the whole ``seeded_normal`` tensor."""

from __future__ import annotations

import random

import pytest
import torch

import gdx
from gdx.wrappers import SeededNormalRows


@pytest.mark.parametrize("n, shape, batch", [
    (1, (3,), 1), (5, (3,), 2), (7, (1,), 3), (100, (8,), 7), (33, (4, 4), 5), (1000, (128,), 64),
    (17, (512,), 4), (9, (5,), 1), (300, (3,), 300), (3, (2,), 1), (50, (1,), 16), (64, (4, 8, 8), 10),
])
def test_rows_in_order_and_at_random_equal_the_whole_tensor(n, shape, batch):
    whole = gdx.seeded_normal(n, shape, 11)
    rows = SeededNormalRows(n, shape, 11)
    assert torch.equal(torch.cat([rows.rows(i, min(i + batch, n)) for i in range(0, n, batch)]), whole)
    rng = random.Random(n)
    for _ in range(10):  # shards and resumed runs start in the middle
        a = rng.randrange(n)
        b = rng.randrange(a, n) + 1
        assert torch.equal(rows.rows(a, b), whole[a:b])


def test_built_in_generators_draw_per_batch_and_dissect_as_before():
    gen, seg = gdx.load_generator("toy"), gdx.load_segmenter("toy")
    assert isinstance(gen.latent_rows(10, seed=0), SeededNormalRows)
    run = gdx.DissectionRun(gen, seg, ["features"], samples=37, batch_size=5, seed=4)
    assert torch.equal(run.latents, gen.sample_latents(37, seed=4))
    per_batch = run.results(lv := run.level_pass(), run.count_pass(lv))[0]

    class Whole(gdx.Generator):  # an adapter without latent_rows: sample_latents once, sliced
        name, module = "whole", gen.module

        def sample_latents(self, n, *, seed):
            return gen.sample_latents(n, seed=seed)

        def generate(self, z):
            return gen.generate(z)

    run2 = gdx.DissectionRun(Whole(), seg, ["features"], samples=37, batch_size=5, seed=4)
    whole = run2.results(lv2 := run2.level_pass(), run2.count_pass(lv2))[0]
    assert torch.equal(per_batch.iou, whole.iou) and torch.equal(per_batch.thresholds, whole.thresholds)
    assert torch.equal(per_batch.top_indices, whole.top_indices)
