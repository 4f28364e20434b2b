"""The sampling loop of the ``diffusion`` generator, as one ``nn.Module`` the engine can hook.

Why a module of its own: gdx counts a block's calls from the start of each call of
the generator's top-level module (docs/diffusion.md, "Layers at a step"), so the whole
scheduler loop -- set_timesteps, scale_model_input, model, step -- runs inside ONE
``forward``. The denoiser is the only child (``unet`` or ``transformer``), so its
blocks are the layers and each runs once per step: with classifier-free guidance the
unconditional and conditional passes are batched into one call, as the diffusers
pipelines do. The VAE (decoding latents) and any text encoder are held outside the
module tree: they run once per image, not per step.

Hooks see the conditional rows of a guided batch and transformer tokens as a map on
the latent grid (:class:`SamplerView`).
"""

from __future__ import annotations

import hashlib
import inspect
import math
from typing import Any

import torch
from torch import nn

import gdx
from gdx.wrappers import SeededNormalRows

#: diffusers models, schedulers and VAEs (optional dependency, dynamic attributes).
Diffusers = Any


def noise_seed(z: torch.Tensor) -> int:
    """A sample's step-noise seed: the first 8 bytes of SHA-256 of its latent (float32 bytes).

    Stochastic schedulers (DDPM, DDIM with eta > 0, ancestral samplers) add noise at each
    step. Drawing it from a generator seeded by the sample's own latent makes a sample's
    image depend on its latent only -- never on its batch or position -- as the engine needs.
    """
    data = z.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "little") & ((1 << 63) - 1)


class DiffusionSampler(nn.Module):
    """``z`` (initial noise, N x C x h x w) -> images N x 3 x H x W in [-1, 1]: the whole loop.

    ``kind`` is ``"unet"`` (UNet2DModel), ``"unet-cond"`` (UNet2DConditionModel with
    prompt embeddings) or ``"dit"`` (DiTTransformer2DModel / Transformer2DModel with a
    class label). ``guidance`` > 1 runs classifier-free guidance in one batched call.
    """

    scheduler: Diffusers  # held outside the module tree (see __init__)
    vae: Diffusers | None
    prompt_embeds: torch.Tensor
    negative_embeds: torch.Tensor

    def __init__(self, model: Diffusers, scheduler: Diffusers, *, kind: str, steps: int, guidance: float,
                 vae: Diffusers | None = None, prompt_embeds: torch.Tensor | None = None,
                 negative_embeds: torch.Tensor | None = None, class_label: int = 0, eta: float = 0.0) -> None:
        super().__init__()
        self.kind, self.steps, self.guidance, self.eta = kind, int(steps), float(guidance), float(eta)
        self.role = "transformer" if kind == "dit" else "unet"
        self.add_module(self.role, model)
        object.__setattr__(self, "scheduler", scheduler)
        object.__setattr__(self, "vae", vae)  # decoded once per image: not a layer
        self.class_label = int(class_label)
        if prompt_embeds is not None:
            self.register_buffer("prompt_embeds", prompt_embeds, persistent=False)
            self.register_buffer("negative_embeds", negative_embeds if negative_embeds is not None
                                 else torch.zeros_like(prompt_embeds), persistent=False)
        #: rows of the model's batch that hooks see (the conditional half when guided), set per call
        self.rows: slice = slice(None)
        self.batch = 0
        # model calls per image: len(timesteps), which a second-order scheduler (Heun) doubles
        scheduler.set_timesteps(self.steps)
        self.calls = len(scheduler.timesteps)
        step_params = inspect.signature(scheduler.step).parameters
        self._step_takes = {k for k in ("generator", "eta") if k in step_params}

    @property
    def model(self) -> Diffusers:
        return getattr(self, self.role)

    @property
    def guided(self) -> bool:
        return self.guidance > 1.0 and self.kind != "unet"

    def _conditioning(self, n: int) -> tuple[dict[str, Any], slice]:
        """The model's extra inputs for a batch of ``n`` (doubled when guided), and the conditional rows."""
        device = self.model.device
        if self.kind == "unet-cond":
            cond = self.prompt_embeds.expand(n, -1, -1)
            if self.guided:  # the pipelines' order: unconditional first
                embeds = torch.cat([self.negative_embeds.expand(n, -1, -1), cond])
                return {"encoder_hidden_states": embeds}, slice(n, 2 * n)
            return {"encoder_hidden_states": cond}, slice(None)
        if self.kind == "dit":
            labels = torch.full((n,), self.class_label, device=device, dtype=torch.long)
            if self.guided:  # DiTPipeline's order: conditional first, the null class 1000 second
                return {"class_labels": torch.cat([labels, torch.full_like(labels, 1000)])}, slice(0, n)
            return {"class_labels": labels}, slice(None)
        return {}, slice(None)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        scheduler, n = self.scheduler, z.shape[0]
        scheduler.set_timesteps(self.steps, device=z.device)
        x = z.to(self.model.dtype) * getattr(scheduler, "init_noise_sigma", 1.0)
        extra, self.rows = self._conditioning(n)
        self.batch = 2 * n if self.guided else n
        step_kwargs: dict[str, Any] = {}
        if "generator" in self._step_takes:
            step_kwargs["generator"] = [torch.Generator(z.device).manual_seed(noise_seed(zi)) for zi in z]
        if "eta" in self._step_takes:
            step_kwargs["eta"] = self.eta
        channels = int(self.model.config.in_channels)
        for t in scheduler.timesteps:
            inp = torch.cat([x, x]) if self.guided else x
            if hasattr(scheduler, "scale_model_input"):
                inp = scheduler.scale_model_input(inp, t)
            if self.kind == "dit":
                tt = t if torch.is_tensor(t) else torch.tensor([t])
                out = self.model(inp, timestep=tt.reshape(-1).expand(inp.shape[0]), return_dict=False, **extra)[0]
            else:
                out = self.model(inp, t, return_dict=False, **extra)[0]
            out = self._guide(out, channels)
            x = scheduler.step(out, t, x, return_dict=False, **step_kwargs)[0]
        return self._decode(x)

    def _guide(self, out: torch.Tensor, channels: int) -> torch.Tensor:
        """Classifier-free guidance over the batched halves; a learned variance is dropped."""
        if self.guided:
            first, second = out.chunk(2)
            cond, uncond = (first, second) if self.kind == "dit" else (second, first)
            if self.kind == "dit":  # DiTPipeline guides the eps channels only
                eps = uncond[:, :channels] + self.guidance * (cond[:, :channels] - uncond[:, :channels])
                out = torch.cat([eps, cond[:, channels:]], dim=1)
            else:
                out = uncond + self.guidance * (cond - uncond)
        if out.shape[1] == 2 * channels:
            out = out[:, :channels]
        return out

    def _decode(self, x: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return x.float().clamp(-1, 1)
        cfg = self.vae.config
        latents = x / float(cfg.scaling_factor) + float(getattr(cfg, "shift_factor", None) or 0.0)
        return self.vae.decode(latents.to(self.vae.dtype), return_dict=False)[0].float().clamp(-1, 1)


class SamplerView:
    """Shows hooks a block's main tensor: the conditional rows, tokens as a map (a ``FeatureView``)."""

    def __init__(self, sampler: DiffusionSampler, grid: tuple[int, int]) -> None:
        self.sampler, self.grid = sampler, grid

    def _tensor(self, output: Any) -> torch.Tensor | None:
        t = output[0] if isinstance(output, tuple) and output else output
        return t if isinstance(t, torch.Tensor) else None

    def _hw(self, tokens: int) -> tuple[int, int] | None:
        h0, w0 = self.grid  # the token grid at this resolution, with the latent's aspect ratio
        h = round(math.sqrt(tokens * h0 / w0))
        return (h, tokens // h) if h and h * (tokens // h) == tokens else None

    def to_map(self, output: Any) -> Any:
        t = self._tensor(output)
        if t is None:
            return output
        if t.shape[0] == self.sampler.batch:
            t = t[self.sampler.rows]
        if t.dim() == 3:
            hw = self._hw(t.shape[1])
            if hw is not None:
                t = t.transpose(1, 2).reshape(t.shape[0], t.shape[2], *hw)
        return t

    def from_map(self, output: Any, features: Any) -> Any:
        t = self._tensor(output)
        if t is None or not isinstance(features, torch.Tensor):
            return features
        new = features
        if t.dim() == 3 and new.dim() == 4:
            new = new.flatten(2).transpose(1, 2)
        if t.shape[0] == self.sampler.batch and self.sampler.rows != slice(None):
            whole = t.clone()
            whole[self.sampler.rows] = new.to(t.dtype)
            new = whole
        new = new.reshape(t.shape).to(t.dtype)
        return (new, *output[1:]) if isinstance(output, tuple) else new


class DiffusionGenerator(gdx.Generator):
    """A diffusers denoiser + scheduler (+ VAE) sampled from initial noise, as a :class:`gdx.Generator`."""

    name = "diffusion"

    def __init__(self, sampler: DiffusionSampler, *, describe: str) -> None:
        self._module = sampler.eval()
        self.steps_per_image = sampler.calls  # = steps for first-order schedulers
        cfg = sampler.model.config
        size = cfg.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        self.latent_shape = (int(cfg.in_channels), int(h), int(w))
        patch = int(getattr(cfg, "patch_size", None) or 1) if sampler.kind == "dit" else 1
        self._view = SamplerView(sampler, (int(h) // patch, int(w) // patch))
        self._describe = describe
        blocks = self.block_names()
        middle = "unet.mid_block" if "unet.mid_block" in blocks else None
        if middle is None:
            tb = [b for b in blocks if b.startswith("transformer.transformer_blocks.") and b.count(".") == 2]
            middle = tb[len(tb) // 2] if tb else None
        self.default_layer = f"{middle}@{self.steps_per_image // 2}" if middle else None

    @property
    def module(self) -> DiffusionSampler:
        return self._module

    def sample_latents(self, n: int, *, seed: int) -> torch.Tensor:
        return gdx.seeded_normal(n, self.latent_shape, seed)

    def latent_rows(self, n: int, *, seed: int) -> gdx.LatentRows:
        return SeededNormalRows(n, self.latent_shape, seed)

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        return self._module(z)  # ONE call: every step runs inside it

    def feature_view(self, block: str) -> SamplerView:
        return self._view

    def to(self, device: torch.device | str) -> "DiffusionGenerator":
        self._module.to(device)
        if self._module.vae is not None:
            self._module.vae.to(device)
        return self

    def describe(self) -> str:
        return self._describe
