"""The diffusion generator: gdx's samples equal diffusers' own, and the engine works on steps.

Tiny random pipelines (diffusion_formats.py) saved with save_pretrained; no network.
Each equality uses the same initial noise (gdx's latents are ``torch.randn`` under
``torch.Generator().manual_seed(seed)``, what a pipeline draws for that generator).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import gdx
from gdx.tracing import count_hooks

diffusers = pytest.importorskip("diffusers")
from diffusers import (  # noqa: E402
    DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, DiTPipeline, EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
)

from diffusion_formats import write_cond_pipeline, write_dit_pipeline, write_unet_pipeline  # noqa: E402

STEPS = 3


def _01(images: torch.Tensor) -> torch.Tensor:
    return images * 0.5 + 0.5  # pipelines return [0, 1]; gdx [-1, 1]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("diffusion")
    return {
        "ddim": write_unet_pipeline(tmp / "ddim", DDIMScheduler(num_train_timesteps=100)),
        "flow": write_unet_pipeline(tmp / "flow", FlowMatchEulerDiscreteScheduler()),
        "euler": write_unet_pipeline(tmp / "euler", EulerDiscreteScheduler(num_train_timesteps=100)),
        "ddpm": write_unet_pipeline(tmp / "ddpm", DDPMScheduler(num_train_timesteps=100)),
        "cond": write_cond_pipeline(tmp / "cond", DDIMScheduler(num_train_timesteps=100))[0],
        "dit": write_dit_pipeline(tmp / "dit", DDIMScheduler(num_train_timesteps=100)),
    }


@torch.no_grad()
def test_unet_ddim_and_flow_matching_equal_the_pipeline(folders):
    # DDPMPipeline's loop (no input scaling) is the flow-matching Euler loop too
    for name, pipeline in (("ddim", DDIMPipeline), ("flow", DDPMPipeline)):
        g = gdx.load_generator("diffusion", weights=str(folders[name]), steps=STEPS)
        assert g.steps_per_image == STEPS and g.default_layer == f"unet.mid_block@{STEPS // 2}"
        pipe = pipeline.from_pretrained(str(folders[name]))
        pipe.set_progress_bar_config(disable=True)
        want = pipe(batch_size=2, generator=torch.Generator().manual_seed(5), num_inference_steps=STEPS,
                    output_type="pt").images
        assert torch.allclose(_01(g.generate(g.sample_latents(2, seed=5))), torch.as_tensor(want), atol=1e-5)


@torch.no_grad()
def test_unet_euler_equals_the_scheduler_loop(folders):
    """Euler needs init_noise_sigma and scale_model_input, which no unconditional pipeline applies:
    compare with the loop every diffusers pipeline runs (StableDiffusionPipeline's, unguided)."""
    g = gdx.load_generator("diffusion", weights=str(folders["euler"]), steps=STEPS)
    z = g.sample_latents(2, seed=3)
    unet = diffusers.UNet2DModel.from_pretrained(str(folders["euler"]), subfolder="unet")
    sched = EulerDiscreteScheduler.from_pretrained(str(folders["euler"]), subfolder="scheduler")
    sched.set_timesteps(STEPS)
    x = z * sched.init_noise_sigma
    for t in sched.timesteps:
        x = sched.step(unet(sched.scale_model_input(x, t), t).sample, t, x).prev_sample
    assert torch.allclose(g.generate(z), x.clamp(-1, 1), atol=1e-5)


@torch.no_grad()
def test_stochastic_steps_depend_on_the_sample_only(folders):
    g = gdx.load_generator("diffusion", weights=str(folders["ddpm"]), steps=STEPS)
    z = g.sample_latents(3, seed=0)
    both = g.generate(z)
    assert torch.allclose(g.generate(z[2:]), both[2:], atol=1e-6) and torch.equal(g.generate(z), both)


@torch.no_grad()
def test_conditional_unet_with_prompt_embeddings_equals_stable_diffusion(folders):
    from safetensors.torch import load_file

    folder = folders["cond"]
    g = gdx.load_generator("diffusion", weights=str(folder), steps=STEPS, guidance=3.0,
                           prompt_embeds=str(folder / "prompt.safetensors"))
    z = g.sample_latents(2, seed=2)
    e = load_file(str(folder / "prompt.safetensors"))
    pos, neg = e["prompt_embeds"].expand(2, -1, -1), e["negative_prompt_embeds"].expand(2, -1, -1)
    unet = diffusers.UNet2DConditionModel.from_pretrained(str(folder), subfolder="unet")
    vae = diffusers.AutoencoderKL.from_pretrained(str(folder), subfolder="vae")
    sched = DDIMScheduler.from_pretrained(str(folder), subfolder="scheduler")
    try:  # the pipeline itself needs the transformers package
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=unet, scheduler=sched,
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    except ImportError:
        pipe = None
    if pipe is not None:
        want = pipe(prompt_embeds=pos, negative_prompt_embeds=neg, latents=z, guidance_scale=3.0,
                    num_inference_steps=STEPS, output_type="pt").images
    else:  # StableDiffusionPipeline.__call__'s loop, transcribed
        sched.set_timesteps(STEPS)
        x, embeds = z * sched.init_noise_sigma, torch.cat([neg, pos])
        for t in sched.timesteps:
            out = unet(sched.scale_model_input(torch.cat([x, x]), t), t, encoder_hidden_states=embeds).sample
            uncond, text = out.chunk(2)
            x = sched.step(uncond + 3.0 * (text - uncond), t, x).prev_sample
        want = (vae.decode(x / vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    assert torch.allclose(_01(g.generate(z)), torch.as_tensor(want), atol=1e-5)
    # hooks see the conditional half of the guided batch: N rows, not 2N
    with gdx.Trace(g, "unet.down_blocks.0.attentions.0@1") as tr:
        g.generate(z)
    assert tr["unet.down_blocks.0.attentions.0@1"].shape[0] == 2


@torch.no_grad()
def test_dit_equals_the_pipeline_and_tokens_are_maps(folders):
    g = gdx.load_generator("diffusion", weights=str(folders["dit"]), steps=STEPS, class_label=3)
    pipe = DiTPipeline.from_pretrained(str(folders["dit"]))
    pipe.set_progress_bar_config(disable=True)
    want = pipe(class_labels=[3, 3], generator=torch.Generator().manual_seed(7), num_inference_steps=STEPS,
                output_type="pt").images
    z = g.sample_latents(2, seed=7)
    assert torch.allclose(_01(g.generate(z)), torch.as_tensor(want), atol=1e-5)
    layer = "transformer.transformer_blocks.1@2"
    with gdx.Trace(g, layer) as tr:
        g.generate(z)
    assert tr[layer].shape == (2, 8, 2, 2)  # hidden 8 on the 2x2 patch grid of a 4x4 latent
    with gdx.intervene(g, "transformer.transformer_blocks.0@0-1", [0, 1], region=torch.ones(2, 2)):
        edited = g.generate(z)
    assert not torch.allclose(edited, g.generate(z), atol=1e-4) and count_hooks(g.module) == 0


@torch.no_grad()
def test_the_engine_on_a_diffusion_unet(folders):
    g = gdx.load_generator("diffusion", weights=str(folders["ddim"]), steps=STEPS)
    z = g.sample_latents(2, seed=1)
    plain = g.generate(z)
    with gdx.intervene(g, "unet.mid_block@0-1", [0, 3, 5]):
        edited = g.generate(z)
    assert not torch.allclose(edited, plain, atol=1e-5) and torch.equal(g.generate(z), plain)
    seg = gdx.wrap_segmenter(lambda im: (im[:, 0] > 0).long(), labels=["dark", "bright"])
    with pytest.raises(gdx.LayerAddressError, match=f"{STEPS} times per image"):
        gdx.dissect(g, seg, "unet.mid_block", samples=4)


def test_gdx_run_and_paint_over_a_window(folders, tmp_path):
    from click.testing import CliRunner

    from gdx.cli import cli
    from gdx.paint.engine import Stroke
    from gdx.paint.models import engine_from_run

    out = tmp_path / "run"
    r = CliRunner().invoke(cli, ["run", "--gen", "diffusion", "--gen-opt", f"weights={folders['ddim']}", "--gen-opt",
                                 f"steps={STEPS}", "--seg", "toy", "--samples", "4", "--batch-size", "2", "--quiet",
                                 "--out", str(out), "--layer", "unet.mid_block@1"])
    assert r.exit_code == 0, r.output
    engine = engine_from_run(out, "unet.mid_block@0-2", quantile_samples=4, iou_min=0.0)
    assert engine.layer == "unet.mid_block@0-2" and engine.dissection.layer == "unet.mid_block@1"
    concept = next(iter(engine.concepts))
    mask = torch.ones(8, 8, dtype=torch.bool)
    assert (engine.render(0, [Stroke(concept, "remove", mask)]) != engine.render(0)).any()
    # gdx ace ranks by the run's step and ablates over the window
    r = CliRunner().invoke(cli, ["ace", "--gen", "diffusion", "--gen-opt", f"weights={folders['ddim']}", "--gen-opt",
                                 f"steps={STEPS}", "--seg", "toy", "--run", str(out), "--layer", "unet.mid_block@0-2",
                                 "--concept", concept, "--samples", "4", "--out", str(tmp_path / "ace")])
    assert r.exit_code == 0, r.output
    assert f"{concept} / unet.mid_block@0-2" in r.output


@torch.no_grad()
def test_a_second_order_scheduler_counts_model_calls(folders, tmp_path):
    """Heun calls the model twice per step but once for the last: steps_per_image = len(timesteps)."""
    diffusers.HeunDiscreteScheduler(num_train_timesteps=100).save_pretrained(tmp_path / "heun")
    g = gdx.load_generator("diffusion", weights=str(folders["euler"]), steps=2, scheduler=str(tmp_path / "heun"))
    assert g.steps_per_image == 3
    with gdx.Trace(g, "unet.mid_block@2") as tr:
        g.generate(g.sample_latents(1, seed=0))
    assert "unet.mid_block@2" in tr


def test_gdx_generators_shows_blocks_and_steps(folders):
    from click.testing import CliRunner

    from gdx.cli import cli

    out = CliRunner().invoke(cli, ["generators", "diffusion", "--gen-opt", f"weights={folders['ddim']}",
                                    "--gen-opt", "steps=2"])
    assert out.exit_code == 0, out.output
    assert "runs each block 2 times per image" in out.output and "unet.mid_block" in out.output
    assert "default (gdx run): unet.mid_block@1" in out.output


def test_bad_folders_say_what_is_wrong(tmp_path, folders):
    with pytest.raises(gdx.errors.CheckpointError, match="folder not found"):
        gdx.load_generator("diffusion", weights=str(tmp_path / "nope"))
    with pytest.raises(gdx.errors.CheckpointError, match="without a scheduler.*scheduler="):
        gdx.load_generator("diffusion", weights=str(folders["ddim"] / "unet"))
    g = gdx.load_generator("diffusion", weights=str(folders["ddim"] / "unet"), steps=2,
                           scheduler=str(folders["ddim"] / "scheduler"))
    assert g.steps_per_image == 2
    with pytest.raises(gdx.errors.CheckpointError, match="no scheduler config"):
        gdx.load_generator("diffusion", weights=str(folders["ddim"] / "unet"), scheduler=str(tmp_path))
    odd = tmp_path / "odd"
    odd.mkdir()
    index = json.loads((folders["ddim"] / "model_index.json").read_text())
    index["unet"] = ["diffusers", "VQModel"]
    (odd / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(gdx.errors.CheckpointError, match="VQModel.*samples UNet2DModel"):
        gdx.load_generator("diffusion", weights=str(odd))
    with pytest.raises(gdx.errors.AdapterOptionError, match="no text_encoder.*prompt_embeds="):
        gdx.load_generator("diffusion", weights=str(folders["cond"]))


@torch.no_grad()
def test_a_text_encoder_in_the_folder_encodes_the_prompt(folders, tmp_path, monkeypatch):
    """The prompt path, with a stand-in for the transformers package (CI has none): the folder's
    tokenizer and text encoder give the embeddings a prompt_embeds file would."""
    import shutil
    import sys
    import types

    from safetensors.torch import save_file

    class Tokenizer:
        model_max_length = 5

        @classmethod
        def from_pretrained(cls, path, **kw):
            return cls()

        def __call__(self, texts, **kw):
            return types.SimpleNamespace(input_ids=torch.tensor([[len(t) % 8] * 5 for t in texts]))

    class Encoder(torch.nn.Module):
        @classmethod
        def from_pretrained(cls, path, **kw):
            assert kw.get("use_safetensors") and kw.get("local_files_only")
            return cls()

        def forward(self, ids):
            return (torch.nn.functional.one_hot(ids, 8).float(),)

    fake = types.ModuleType("transformers")
    fake.FakeTokenizer, fake.FakeEncoder = Tokenizer, Encoder
    monkeypatch.setitem(sys.modules, "transformers", fake)
    folder = tmp_path / "sd"
    shutil.copytree(folders["cond"], folder)
    index = json.loads((folder / "model_index.json").read_text())
    index.update(text_encoder=["transformers", "FakeEncoder"], tokenizer=["transformers", "FakeTokenizer"])
    (folder / "model_index.json").write_text(json.dumps(index))
    (folder / "tokenizer").mkdir()
    (folder / "text_encoder").mkdir()
    save_file({"w": torch.zeros(1)}, str(folder / "text_encoder" / "model.safetensors"))
    g = gdx.load_generator("diffusion", weights=str(folder), steps=2, prompt="a tree", negative_prompt="")
    embeds = tmp_path / "e.safetensors"
    one_hot = torch.nn.functional.one_hot
    save_file({"prompt_embeds": one_hot(torch.full((1, 5), 6), 8).float(),
               "negative_prompt_embeds": one_hot(torch.zeros(1, 5, dtype=torch.long), 8).float()}, str(embeds))
    h = gdx.load_generator("diffusion", weights=str(folder), steps=2, prompt_embeds=str(embeds))
    z = g.sample_latents(1, seed=0)
    assert torch.equal(g.generate(z), h.generate(z))
