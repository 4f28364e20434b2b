"""gdx.invert: photos inverted into a generator, then edited like samples (docs/paint.md, "Painting a photo").

The toy world checks the mechanics exactly (known units, exact segmenter); the scene world
checks the issue's bars on rendered scenes the GAN never saw (render seed 14_014; training
pools use seeds from 10,000,000 up, tools/scenes/pool.py).
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import gdx
from gdx.inversion import Inversion, InvertedGenerator, layer_for_edits
from gdx.paint import PaintEngine, Stroke

TOY_SUN = 0  # toy unit 0 draws the sun (gdx.plugins.toy_world)


@pytest.fixture(scope="module")
def toy():
    gen = gdx.load_generator("toy")
    with torch.no_grad():
        photos = gen.generate(gen.sample_latents(4, seed=99))  # the "photos": samples of another seed
    # anchor=0: the toy's blobs switch on through a hard threshold of the latent, so the latent
    # stage cannot reach the photo and pulling the features back towards it only costs accuracy
    # (with the default 0.1: 0.865 of pixels agree; docs/paint.md)
    inv = gdx.invert(gen, photos, layer="features", latent_steps=30, feature_steps=80, anchor=0.0)
    return gen, photos, inv


def test_toy_reconstruction_and_composite(toy):
    gen, photos, inv = toy
    seg = gdx.load_segmenter("toy")
    agree = (seg.segment(inv.reconstructions) == seg.segment(photos)).float().mean()
    assert agree >= 0.95, f"toy reconstruction segments like the photo on {agree:.3f} of pixels"
    assert float(inv.psnr().mean()) > 25
    view = inv.as_generator()
    assert isinstance(view, InvertedGenerator) and isinstance(view, gdx.Generator)
    z = view.sample_latents(4, seed=0)
    assert torch.equal(z[:, 0], torch.arange(4).float())
    with torch.no_grad():
        assert torch.equal(view.generate(z), photos)  # no edit: the photo itself, bit for bit
        raw = inv.as_generator(composite=False).generate(z)
    torch.testing.assert_close(raw, inv.reconstructions)


def test_deterministic(toy):
    gen, photos, inv = toy
    again = gdx.invert(gen, photos, layer="features", latent_steps=30, feature_steps=80, anchor=0.0)
    assert torch.equal(again.features, inv.features) and torch.equal(again.latents, inv.latents)
    other = gdx.invert(gen, photos[:1], layer="features", latent_steps=30, feature_steps=0, seed=5)
    assert not torch.equal(other.latents, inv.latents[:1])
    # early stop: a tolerance every image already meets ends both stages before their first step
    done = gdx.invert(gen, photos, layer="features", latent_steps=30, feature_steps=80, tolerance=10.0)
    assert done.steps == (0, 0) and inv.steps[0] == 30 and 0 < inv.steps[1] <= 80  # the toy stops at ~74


def test_toy_edit_stays_in_the_stroke(toy):
    """Switching the sun unit on in a square draws sun there; outside the square dilated by one
    feature cell the image is the photo (the composite), as intervene sees it."""
    gen, photos, inv = toy
    seg = gdx.load_segmenter("toy")
    view = inv.as_generator()
    labels = seg.segment(photos)
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[12:20, 12:20] = True
    with torch.no_grad(), gdx.intervene(view, "features", [TOY_SUN, TOY_SUN + 4], value=3.0, region=mask):
        edited = view.generate(view.sample_latents(4, seed=0))
    sun = seg.segment(edited) == TOY_SUN
    assert sun[:, mask].float().mean() >= 0.5
    outside = ~(F.max_pool2d(mask.float()[None, None], 9, stride=1, padding=4)[0, 0] > 0)  # one cell = 4 px
    diff = (edited - photos).abs().mean(1)[:, outside]
    assert float(diff.mean()) < 0.02
    assert bool((labels[:, outside] == seg.segment(edited)[:, outside]).all())


def test_paint_engine_on_a_photo(toy, tmp_path):
    from gdx_browser import make_run
    from gdx.paint import engine_from_run

    gen, photos, inv = toy
    engine = engine_from_run(make_run(tmp_path / "run", "toy", "toy", "features", samples=60))
    inv = gdx.invert(engine.generator, photos, layer="features", latent_steps=30, feature_steps=80, anchor=0.0)
    painted = engine.with_generator(inv.as_generator(edit_layer=engine.layer))
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[4:12, 4:12] = True
    rgb = painted.render(1, [Stroke("sun", "draw", mask)])
    x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    assert (gdx.load_segmenter("toy").segment(x)[0][mask] == TOY_SUN).float().mean() >= 0.5
    assert np.array_equal(painted.render(1), np.asarray(((photos[1].permute(1, 2, 0) + 1) * 127.5).round().byte()))
    with pytest.raises(gdx.PaintError, match="same module"):
        engine.with_generator(gdx.load_generator("toy"))


def test_save_load_roundtrip(toy, tmp_path):
    gen, photos, inv = toy
    path = inv.save(tmp_path / "inv.safetensors")
    back = Inversion.load(path, gen)
    assert torch.equal(back.features, inv.features) and back.settings == inv.settings
    torch.testing.assert_close(back.reconstructions, inv.reconstructions)
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(gdx.InversionError, match="safetensors"):
        Inversion.load(tmp_path / "bad.safetensors", gen)


def test_errors_name_the_fix(toy):
    gen, photos, inv = toy
    with pytest.raises(gdx.InversionError, match="resize"):
        gdx.invert(gen, torch.zeros(1, 3, 16, 16), layer="features")
    with pytest.raises(gdx.InversionError, match=r"\[-1, 1\]"):
        gdx.invert(gen, photos * 10, layer="features")
    with pytest.raises(gdx.InversionError, match="N x 3 x H x W"):
        gdx.invert(gen, photos[0], layer="features")
    with pytest.raises(gdx.UnknownLayerError):
        gdx.invert(gen, photos, layer="nope")
    with pytest.raises(gdx.InversionError, match="photo indices"):
        inv.as_generator().generate(torch.tensor([[7.0]]))
    with pytest.raises(gdx.SettingsError):
        gdx.invert(gen, photos, layer="features", latent_steps=-1)
    with pytest.raises(gdx.InversionError, match="segment_features"):
        gdx.invert(gen, photos, layer="features", perceptual=gdx.load_segmenter("toy"))


def test_cli_invert_and_paint_image(toy, tmp_path, monkeypatch):
    """``gdx invert IMAGE... --out DIR`` saves what Inversion.load reads; ``gdx paint --image`` opens one."""
    from click.testing import CliRunner
    from PIL import Image

    from gdx.cli.main import cli
    from gdx.plots import to_uint8

    gen, photos, _ = toy
    files = []
    for i in range(2):
        files.append(tmp_path / f"in{i}.png")
        Image.fromarray(to_uint8(photos[i])).save(files[-1])
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["invert", *map(str, files), "--out", str(out), "--gen", "toy",
                                   "--latent-steps", "20", "--feature-steps", "40", "--anchor", "0"])
    assert res.exit_code == 0, res.output
    assert "mean PSNR" in res.output
    back = Inversion.load(out / "inversion.safetensors", gen)
    assert len(back) == 2 and back.layer == "features"
    assert (out / "0001-reconstruction.png").exists() and (out / "inversion.json").exists()
    res = CliRunner().invoke(cli, ["invert", str(tmp_path / "nope.png"), "--out", str(out)])
    assert res.exit_code != 0 and "nope.png" in res.output
    (tmp_path / "bad.png").write_bytes(b"text")
    res = CliRunner().invoke(cli, ["invert", str(tmp_path / "bad.png"), "--out", str(out), "--gen", "toy"])
    assert res.exit_code == 1 and "PNG or JPEG" in res.output and "Traceback" not in res.output

    uvicorn = pytest.importorskip("uvicorn")
    from gdx_browser import make_run

    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.append(app))
    run = make_run(tmp_path / "run", "toy", "toy", "features", samples=40)
    res = CliRunner().invoke(cli, ["paint", "--run", str(run), "--image", str(files[1])])
    assert res.exit_code == 0, res.output
    from starlette.testclient import TestClient

    with TestClient(served[0], base_url="http://127.0.0.1") as client:
        photo = client.get("/api/info").json()["photo"]
        assert photo and client.get(f"/api/photo/{photo}.png").status_code == 200
    # GANPaint inverts with the run's concept prior (the toy's objects: sun, tree, rock)
    prior = served[0].state.photos[photo].generator.inversion.settings.prior
    assert prior.startswith("features: 3 concepts"), prior

    # gdx invert --run: the layer and the concept prior GANPaint uses
    res = CliRunner().invoke(cli, ["invert", str(files[0]), "--out", str(tmp_path / "out2"), "--run", str(run),
                                   "--latent-steps", "5", "--feature-steps", "5", "--gen", "toy"])
    assert res.exit_code == 0, res.output
    assert "--gen is ignored" in res.output and "concept prior: features: 3 concepts" in res.output
    assert json.loads((tmp_path / "out2" / "inversion.json").read_text())["prior"].startswith("features: 3 concepts")


def test_concept_prior_levels_and_loss():
    """ConceptPrior.measure: each unit's mean activation where the segmenter finds its concept
    on the generator's own samples; the loss only penalises units firing below that level."""
    from gdx.concept_prior import ConceptPrior

    gen, seg = gdx.load_generator("toy"), gdx.load_segmenter("toy")
    prior = ConceptPrior.measure(gen, seg, "features", {"sun": (TOY_SUN, 7), "lake": ()}, samples=40)
    assert list(prior.units) == ["sun"]  # no units: left out
    sun_level, other_level = (float(v) for v in prior.levels["sun"])
    assert sun_level > 0.5 and sun_level > 3 * abs(other_level)  # unit 0 draws the sun, unit 7 does not
    assert prior.describe() == "features: 1 concepts, weight 0.5"
    with torch.no_grad(), gdx.Trace(gen, "features") as tr:
        photos = gen.generate(gen.sample_latents(4, seed=3))
    acts = tr["features"]
    targets = prior.targets(photos, acts.shape[-2:])
    assert len(targets) == 1 and bool(targets[0][2].any())
    loss = prior.loss(acts, targets)
    assert loss.shape == (4,) and bool((loss >= 0).all())
    high = acts.clone()
    high[:, [TOY_SUN, 7]] = 100.0
    assert float(prior.loss(high, targets).abs().max()) == 0.0  # above the level: no pull
    low = acts.clone()
    low[:, [TOY_SUN, 7]] = -1.0
    assert bool((prior.loss(low, targets) > loss).any())
    with pytest.raises(gdx.InversionError, match="not a label"):
        ConceptPrior.measure(gen, seg, "features", {"cloud": (0,)}, samples=4)
    with pytest.raises(gdx.InversionError, match="weight"):
        ConceptPrior(prior.layer, seg, prior.units, prior.levels, weight=-1.0)


def test_invert_with_a_concept_prior_draws_the_concept_with_its_units(toy):
    """The prior holds the sun units up where the photo shows sun; the saved settings say so."""
    from gdx.concept_prior import ConceptPrior

    gen, photos, plain = toy
    seg = gdx.load_segmenter("toy")
    prior = ConceptPrior.measure(gen, seg, "features", {"sun": (TOY_SUN, TOY_SUN + 4)}, samples=40, weight=10.0)
    inv = gdx.invert(gen, photos, layer="features", latent_steps=30, feature_steps=80, anchor=0.0, prior=prior)
    (units, levels, cells), = prior.targets(photos, inv.features.shape[-2:])

    def shortfall(features: torch.Tensor) -> float:
        gap = F.relu(levels[None, :, None, None] - features[:, units])
        return float(gap.permute(0, 2, 3, 1)[cells].mean())

    assert shortfall(inv.features) < 0.5 * shortfall(plain.features)
    assert inv.settings.prior == prior.describe() and plain.settings.prior == ""
    agree = (seg.segment(inv.reconstructions) == seg.segment(photos)).float().mean()
    assert agree >= 0.95


def test_concept_prior_must_be_on_a_layer_the_features_drive(toy):
    from gdx.concept_prior import ConceptPrior

    gen, photos, _ = toy
    prior = ConceptPrior.measure(gen, gdx.load_segmenter("toy"), "features", {"sun": (TOY_SUN,)}, samples=8)
    with pytest.raises(gdx.InversionError, match="does not run after"):
        gdx.invert(gen, photos[:1], layer="decoder", latent_steps=0, feature_steps=1, prior=prior)
