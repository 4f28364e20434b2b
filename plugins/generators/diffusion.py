"""The "diffusion" generator: a diffusers denoiser and scheduler, sampled by gdx (docs/diffusion.md).

``weights`` is a local folder, loaded offline:

* a pipeline folder (``model_index.json``) with ``unet`` or ``transformer``,
  ``scheduler``, and optionally ``vae`` (latent pipelines decode through it) and
  ``text_encoder`` + ``tokenizer`` (used for ``prompt`` when present; needs the
  transformers package); or
* a bare model folder (``config.json`` + ``diffusion_pytorch_model.safetensors``) plus
  the option ``scheduler=`` naming a scheduler config (a ``scheduler_config.json`` or
  the folder holding one).

Models: ``UNet2DModel`` (unconditional), ``UNet2DConditionModel`` (a fixed ``prompt``
encoded once by the folder's text encoder, or ``prompt_embeds=`` a safetensors file
with ``prompt_embeds`` 1 x T x D and optionally ``negative_prompt_embeds``), and
``DiTTransformer2DModel`` / ``Transformer2DModel`` (class-conditional DiT, ``class_label``).
Schedulers: any diffusers scheduler with ``set_timesteps``/``step`` (DDIM, DDPM, Euler,
flow-matching Euler, ...).

Latents are the initial noise, N(0, 1) of the denoiser's input shape (C x h x w), drawn
with :func:`gdx.seeded_normal` -- the same bits as ``torch.randn`` with
``torch.Generator().manual_seed(seed)``, which is what a diffusers pipeline draws for
one ``generator``. A stochastic scheduler's step noise is seeded per sample from its
latent (:func:`gdx.plugins.generators.diffusion_sampler.noise_seed`).

Layers: the denoiser's blocks at a step, ``unet.mid_block@5``,
``transformer.transformer_blocks.3@0-4`` (a window, for edits); ``steps_per_image`` is
``steps``: guidance runs the unconditional and conditional passes in one batched
call, and hooks see the conditional rows. Transformer tokens are shown as maps on the
latent grid.

Needs the optional dependency diffusers: ``pip install 'gdx[diffusers]'``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

import gdx
from gdx.errors import AdapterOptionError, CheckpointError, MissingDependencyError
from gdx.hookspecs import Register
from gdx.plugins.generators.diffusion_sampler import DiffusionGenerator, DiffusionSampler

WHAT = "diffusion weights"
#: denoiser class -> the sampler's kind
KINDS = {"UNet2DModel": "unet", "UNet2DConditionModel": "unet-cond",
         "DiTTransformer2DModel": "dit", "Transformer2DModel": "dit"}
#: the diffusers pipelines' own default guidance scales
DEFAULT_GUIDANCE = {"unet": 1.0, "unet-cond": 7.5, "dit": 4.0}
Diffusers = Any


def _import_diffusers() -> Any:
    try:
        import diffusers
    except ImportError as exc:
        raise MissingDependencyError(
            f"the diffusion generator needs the diffusers package ({exc}). Install it with: pip install 'gdx[diffusers]'"
        ) from None
    return diffusers


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{WHAT}: cannot read {path} ({exc}); the file is damaged.") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{WHAT}: {path} is not a JSON object; the file is damaged.")
    return data


def _safetensors_only(folder: Path, what: str) -> None:
    """Refuse pickled weights: only safetensors are read (a pickle can run code)."""
    if any(folder.glob("*.safetensors")):
        return
    pickled = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt*")]
    found = f"only {', '.join(pickled)} (pickled)" if pickled else "no weights file"
    raise CheckpointError(
        f"{WHAT}: the {what} in {folder} has {found}; gdx reads safetensors only. Re-save it with "
        "save_pretrained(folder, safe_serialization=True) (or copy its .safetensors file there)."
    )


def _load_model(cls_name: str, root: Path, subfolder: str | None, what: str) -> Diffusers:
    diffusers = _import_diffusers()
    cls = getattr(diffusers, cls_name, None)
    if cls is None:
        raise CheckpointError(f"{WHAT}: diffusers {diffusers.__version__} has no class {cls_name} (the {what}); "
                              "upgrade diffusers.")
    folder = root / subfolder if subfolder else root
    _safetensors_only(folder, what)
    try:
        model = cls.from_pretrained(str(root), subfolder=subfolder, local_files_only=True, use_safetensors=True,
                                    low_cpu_mem_usage=False)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        text = " ".join(str(exc).strip().splitlines()[:2])[:300]
        raise CheckpointError(f"{WHAT}: cannot load the {what} ({cls_name}) from {folder} ({text}). The weights "
                              "may be truncated or from another model.") from None
    return model.eval().requires_grad_(False)


def load_scheduler(path: Path) -> Diffusers:
    """A diffusers scheduler from a ``scheduler_config.json`` (or the folder holding one)."""
    cfg_path = path / "scheduler_config.json" if path.is_dir() else path
    if not cfg_path.is_file():
        raise CheckpointError(
            f"{WHAT}: no scheduler config at {cfg_path}. Pass the generator option `scheduler=...` naming a "
            "scheduler_config.json (e.g. one written by DDIMScheduler().save_pretrained(folder))."
        )
    config = _read_json(cfg_path)
    diffusers = _import_diffusers()
    name = config.get("_class_name")
    cls = getattr(diffusers, str(name), None)
    if cls is None or not hasattr(cls, "from_config"):
        raise CheckpointError(f"{WHAT}: {cfg_path} names the scheduler {name!r}, which diffusers "
                              f"{diffusers.__version__} does not have; use e.g. DDIMScheduler or EulerDiscreteScheduler.")
    return cls.from_config(config)


def resolve_folder(weights: str | Path, scheduler: str | None) -> tuple[Path, dict[str, Any], Path]:
    """(root, {component: (library, class) or subfolder}, scheduler config path) of a diffusion folder."""
    root = Path(weights).expanduser()
    if not root.exists():
        raise CheckpointError(f"{WHAT}: folder not found: {root}. Pass a diffusers pipeline folder (with "
                              "model_index.json) as the generator option `weights=...`.")
    if root.is_file():
        raise CheckpointError(f"{WHAT}: {root} is a file; the diffusion generator takes a diffusers pipeline "
                              "folder (model_index.json) or a model folder (config.json) plus `scheduler=...`.")
    if (root / "model_index.json").is_file():
        index = _read_json(root / "model_index.json")
        parts = {k: v for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[0]}
        if not any(k in parts for k in ("unet", "transformer")):
            raise CheckpointError(f"{WHAT}: {root}/model_index.json lists {', '.join(parts) or 'no components'} "
                                  "but no unet or transformer; this is not a diffusion pipeline gdx can sample.")
        sched = Path(scheduler).expanduser() if scheduler else root / "scheduler"
        return root, parts, sched
    if not (root / "config.json").is_file():
        raise CheckpointError(f"{WHAT}: {root} has neither model_index.json (a pipeline folder) nor config.json "
                              "(a model folder); pass the folder save_pretrained wrote.")
    if not scheduler:
        raise CheckpointError(f"{WHAT}: {root} is a bare model folder without a scheduler. Pass the generator "
                              "option `scheduler=...` naming a scheduler_config.json (or its folder).")
    cls = _read_json(root / "config.json").get("_class_name")
    return root, {"": ["diffusers", cls]}, Path(scheduler).expanduser()


def _prompt_embeddings(root: Path, parts: dict[str, Any], prompt: str, negative_prompt: str,
                       prompt_embeds: str | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    if prompt_embeds:
        from gdx.checkpoints import load_safetensors_file

        tensors = load_safetensors_file(prompt_embeds, what="prompt embeddings")
        if "prompt_embeds" not in tensors:
            raise CheckpointError(f"{WHAT}: {prompt_embeds} has no tensor named prompt_embeds (it has "
                                  f"{', '.join(tensors) or 'none'}); save {{'prompt_embeds': 1 x T x D}} with safetensors.")
        pos = tensors["prompt_embeds"].float()
        neg = tensors.get("negative_prompt_embeds")
        return (pos if pos.dim() == 3 else pos[None]), (None if neg is None else (neg if neg.dim() == 3 else neg[None]).float())
    if "text_encoder" not in parts or "tokenizer" not in parts:
        raise AdapterOptionError(f"{WHAT}: {root} holds a UNet2DConditionModel but no text_encoder/tokenizer: pass the "
                                 "generator option `prompt_embeds=FILE.safetensors` (tensors prompt_embeds 1 x T x D, "
                                 "optionally negative_prompt_embeds).")
    try:
        import transformers
    except ImportError:
        raise MissingDependencyError(f"{WHAT}: {root} has a text encoder, which needs the transformers package: "
                                     "pip install transformers, or pass the generator option `prompt_embeds=FILE`.") from None
    _safetensors_only(root / "text_encoder", "text encoder")
    tok = getattr(transformers, parts["tokenizer"][1]).from_pretrained(str(root / "tokenizer"), local_files_only=True)
    enc = getattr(transformers, parts["text_encoder"][1]).from_pretrained(
        str(root / "text_encoder"), local_files_only=True, use_safetensors=True).eval()

    def encode(text: str) -> torch.Tensor:  # as StableDiffusionPipeline.encode_prompt, without clip_skip
        ids = tok([text], padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
        with torch.no_grad():
            return enc(ids)[0].float()

    return encode(prompt), encode(negative_prompt)


def build_diffusion(
    weights: str,
    scheduler: str | None = None,
    steps: int = 20,
    guidance: float | None = None,
    prompt: str = "",
    negative_prompt: str = "",
    prompt_embeds: str | None = None,
    class_label: int = 0,
    eta: float = 0.0,
    device: str = "cpu",
) -> gdx.Generator:
    """A diffusers UNet/DiT pipeline folder sampled by gdx (needs gdx[diffusers]); layers BLOCK@STEP.

    Args:
        weights: a diffusers pipeline folder (model_index.json), or a model folder plus scheduler=
        scheduler: a scheduler_config.json or its folder (default: the pipeline's scheduler/)
        steps: denoising steps per image (each block runs once per step)
        guidance: classifier-free guidance scale (default: 7.5 for UNet2DCondition, 4.0 for DiT; 1 = off)
        prompt: the fixed prompt, encoded by the folder's text encoder (UNet2DConditionModel)
        negative_prompt: the unconditional prompt for guidance
        prompt_embeds: a safetensors file with prompt_embeds (1 x T x D) [and negative_prompt_embeds] instead of a text encoder
        class_label: the class a DiT draws
        eta: DDIM's eta (0 = deterministic)
        device: torch device to run on (cpu, cuda, ...)
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise AdapterOptionError(f"diffusion option steps={steps!r}: give a whole number of denoising steps >= 1.")
    root, parts, sched_path = resolve_folder(weights, scheduler)
    role = "unet" if "unet" in parts else "transformer" if "transformer" in parts else ""
    cls_name = str(parts[role][1])
    kind = KINDS.get(cls_name)
    if kind is None:
        raise CheckpointError(f"{WHAT}: {root / role} holds a diffusers {cls_name}; the diffusion generator samples "
                              f"{', '.join(KINDS)}. Point `weights=...` at such a pipeline.")
    model = _load_model(cls_name, root, role or None, "denoiser")
    sched = load_scheduler(sched_path)
    vae = None
    if "vae" in parts:
        vae = _load_model(str(parts["vae"][1]), root, "vae", "vae")
    elif kind == "dit" or kind == "unet-cond":
        raise CheckpointError(f"{WHAT}: {root} has a latent-space {cls_name} but no vae/ to decode its latents; "
                              "save the pipeline with its vae.")
    pos = neg = None
    if kind == "unet-cond":
        pos, neg = _prompt_embeddings(root, parts, prompt, negative_prompt, prompt_embeds)
    scale = DEFAULT_GUIDANCE[kind] if guidance is None else float(guidance)
    sampler = DiffusionSampler(model, sched, kind=kind, steps=steps, guidance=scale, vae=vae,
                               prompt_embeds=pos, negative_embeds=neg, class_label=class_label, eta=eta)
    text = (f"diffusion ({cls_name} + {type(sched).__name__}, {steps} steps"
            + (f", guidance {scale:g}" if kind != "unet" and scale > 1 else "") + ")")
    return DiffusionGenerator(sampler, describe=text).to(device)


@gdx.hookimpl
def register_generators(register: Register) -> None:
    register("diffusion", build_diffusion)
