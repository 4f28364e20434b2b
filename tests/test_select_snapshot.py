"""Choosing and exporting a scene-GAN snapshot (tools.scenes.select_snapshot)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import gdx
from gdx.plugins.generators.progan_arch import ProgressiveGenerator
from tools.scenes import select_snapshot as sel

SIZES = [16, 16, 16, 8, 8, 4]  # a tiny 64x64 ProGAN


def _fake_run(tmp_path, steps=(100, 200)):
    for i, step in enumerate(steps):
        torch.manual_seed(i)
        sd = {k: v.half().contiguous() for k, v in ProgressiveGenerator(sizes=SIZES).state_dict().items()}
        save_file(sd, str(tmp_path / f"snapshot_{step:06d}.safetensors"), metadata={"sizes": json.dumps(SIZES)})
    torch.save({"seed": 0, "step": steps[-1], "elapsed": 12.5, "sizes": SIZES}, tmp_path / "checkpoint.pt")
    return tmp_path


def test_scores_every_snapshot_and_exports_a_loadable_generator(tmp_path):
    (tmp_path / "run").mkdir()
    run = _fake_run(tmp_path / "run")
    scores = sel.score_run(run, samples=16)
    assert [s.step for s in scores] == [100, 200]
    for s in scores:
        assert abs(sum(s.freq.values()) - 1) < 1e-6 and 0 <= s.tv <= 1
        assert s.concepts == sum(f >= 0.005 for f in s.freq.values())
    dest = tmp_path / "out" / "scene_gan.safetensors"
    sel.export(run, scores[1], dest)
    config = json.loads(dest.with_suffix(".json").read_text())
    assert config["sizes"] == SIZES and config["steps"] == 200
    gen = gdx.load_generator("scene", weights=str(dest))
    with torch.no_grad():
        assert gen.generate(gen.sample_latents(2, seed=0)).shape == (2, 3, 64, 64)


def test_best_prefers_the_passing_snapshot_with_the_widest_margin():
    def score(step, tv, concepts, key_min):
        return sel.SnapshotScore(step=step, path=None, tv=tv, concepts=concepts, key_min=key_min, freq={})

    low_tv_fails = score(1, 0.05, 12, 0.003)
    borderline_tv = score(2, 0.097, 14, 0.009)  # most windows, but TV barely under 0.10
    balanced = score(3, 0.065, 14, 0.0077)
    assert sel.best([low_tv_fails, borderline_tv, balanced]).step == 3
    assert sel.margin(balanced) == pytest.approx(min(0.10 / 0.065, 0.0077 / 0.005))
    assert sel.best([low_tv_fails, score(4, 0.12, 12, 0.004)]).step == 1


def test_a_run_without_snapshots_gets_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="--snapshot-minutes"):
        sel.main(["--run", str(tmp_path)])
