"""Every registered adapter is built and run once, timm-style, with test-sized options.

The adapters are listed from the default registry at collection time, so a new
adapter is tested the day it is registered: one without an entry in the fixture table
of its kind FAILS here, naming the table to extend. An entry is a function
``(tmp_path) -> options`` that writes whatever tiny random checkpoint the adapter
needs (see gen_formats.py) and returns the keyword options to build it with.

To add a kind (segmenters): add a table ``SEGMENTER_OPTIONS`` and a test
parametrised over ``_registered("segmenter")`` that calls ``_options("segmenter", ...)``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import gdx
from gen_formats import tiny_progan, tiny_stylegan2, write_nvidia_pkl, write_progan

OptionsFn = Callable[[Path], dict[str, Any]]


def _vae_options(tmp_path: Path) -> dict[str, Any]:
    pytest.importorskip("diffusers")
    from gen_formats import tiny_autoencoder_kl

    tiny_autoencoder_kl().save_pretrained(tmp_path / "vae")
    return {"weights": str(tmp_path / "vae")}


def _diffusion_options(tmp_path: Path) -> dict[str, Any]:
    pytest.importorskip("diffusers")
    from diffusers import DDIMScheduler
    from diffusion_formats import write_unet_pipeline

    return {"weights": str(write_unet_pipeline(tmp_path / "pipe", DDIMScheduler(num_train_timesteps=100))), "steps": 2}


GENERATOR_OPTIONS: dict[str, OptionsFn] = {
    "toy": lambda tmp: {},
    "scene": lambda tmp: {},  # the bundled weights
    "scene-vae": lambda tmp: {},
    "scene-diffusion": lambda tmp: {},
    "progan": lambda tmp: {"weights": str(write_progan(tiny_progan(), tmp / "g.pth"))},
    "stylegan2": lambda tmp: {"weights": str(write_nvidia_pkl(tiny_stylegan2(), tmp / "g.pkl"))},
    "vae": _vae_options,
    "diffusion": _diffusion_options,
}

OPTION_TABLES: dict[str, dict[str, OptionsFn]] = {"generator": GENERATOR_OPTIONS}


def _registered(kind: str) -> list[str]:
    return sorted(gdx.default_registry().infos(kind))


def _options(kind: str, name: str, tmp_path: Path) -> dict[str, Any]:
    table = OPTION_TABLES.get(kind, {})
    if name not in table:
        pytest.fail(
            f"{kind} {name!r} is registered but has no smoke-test entry: add one to "
            f"{kind.upper()}_OPTIONS in tests/test_adapter_smoke.py (a tiny random checkpoint)."
        )
    return table[name](tmp_path)


@pytest.mark.parametrize("name", _registered("generator"))
def test_generator_builds_samples_generates_and_hooks(name, tmp_path):
    info = gdx.default_registry().info("generator", name)
    assert info.description, f"generator {name!r} needs a docstring (its first line is the listing)"
    gen = gdx.load_generator(name, **_options("generator", name, tmp_path))
    assert isinstance(gen, gdx.Generator)
    z = gen.sample_latents(2, seed=11)
    assert z.device.type == "cpu" and z.shape[0] == 2
    assert torch.equal(z, gen.sample_latents(2, seed=11)), "latents must be a function of the seed"
    assert not torch.equal(z, gen.sample_latents(2, seed=12))
    assert gen.to("cpu") is gen and gen.device.type == "cpu"
    layers = gen.layer_names()
    assert layers, "a generator must expose hookable layers"
    top = [n for n in layers if "." not in n]
    with torch.no_grad(), gdx.Trace(gen, top) as trace:
        images = gen.generate(z.to(gen.device))
        again = gen.generate(z.to(gen.device))
    assert images.ndim == 4 and images.shape[:2] == (2, 3) and images.dtype == torch.float32
    assert torch.isfinite(images).all() and images.abs().max() < 1e3
    assert torch.equal(images, again), "default options must be deterministic"
    seen = [n for n in top if n in trace]
    assert seen, f"no top-level layer of {name!r} fired during generate: {top}"
    first = trace[seen[0]]
    assert isinstance(first, torch.Tensor) and first.shape[0] == 2
    if gen.default_layer is not None:
        assert gen.default_layer in layers, f"default_layer {gen.default_layer!r} is not a listed layer"
        with torch.no_grad(), gdx.Trace(gen, [gen.default_layer]) as trace:
            gen.generate(z.to(gen.device))
        assert isinstance(trace[gen.default_layer], torch.Tensor)
    if gen.steps_per_image > 1:  # the step contract: module called once, each block once per step
        calls = {"module": 0, "block": 0}
        block = gdx.LayerAddress.parse(gen.default_layer or f"{gen.block_names()[0]}@0").block
        handles = [gen.module.register_forward_pre_hook(lambda *_: calls.__setitem__("module", calls["module"] + 1)),
                   dict(gen.module.named_modules())[block].register_forward_hook(
                       lambda *_: calls.__setitem__("block", calls["block"] + 1))]
        try:
            with torch.no_grad():
                gen.generate(z.to(gen.device))
        finally:
            for h in handles:
                h.remove()
        assert calls == {"module": 1, "block": gen.steps_per_image}, (
            f"{name!r} declares steps_per_image={gen.steps_per_image}: generate() must call its module once "
            f"and run {block!r} once per step; counted {calls}")


def test_an_adapter_without_a_smoke_entry_fails(tmp_path):
    with pytest.raises(pytest.fail.Exception, match="GENERATOR_OPTIONS"):
        _options("generator", "registered-but-untested", tmp_path)


# --- segmenters (entries and the contract live in seg_smoke_options.py) -----------------------
from seg_smoke_options import SEGMENTER_OPTIONS, check_segmenter  # noqa: E402

OPTION_TABLES["segmenter"] = SEGMENTER_OPTIONS


@pytest.mark.parametrize("name", _registered("segmenter"))
def test_segmenter_builds_and_segments(name, tmp_path):
    info = gdx.default_registry().info("segmenter", name)
    assert info.description, f"segmenter {name!r} needs a docstring (its first line is the listing)"
    check_segmenter(name, gdx.load_segmenter(name, **_options("segmenter", name, tmp_path)))
