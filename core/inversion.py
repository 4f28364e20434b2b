"""Invert photos into a generator, so that intervention and GANPaint can edit them.

Bau et al. ("Semantic Photo Manipulation with a Generative Image Prior", 2019) edit a
real photo by finding generator features that reproduce it, editing those features, and
keeping everything outside the edit as it was. :func:`invert` does this for any
:class:`gdx.Generator` with a convolutional layer (docs/paint.md, "Painting a photo"):

1. **Warm start.** The generator's own encoder when it has one (``encode(images) ->
   latents``, or ``encoder=``), else the best of ``candidates`` latents of
   ``sample_latents(candidates, seed=seed)`` (lowest pixel error).
2. **Latent stage.** ``latent_steps`` Adam steps on the latent, so that the features at
   ``layer`` start from a coherent image of the generator.
3. **Feature stage.** ``feature_steps`` Adam steps on the feature map of ``layer`` itself
   (N x U x h x w, one per image): the per-image generator of the paper, restricted to
   one layer. The loss is pixel MSE, plus ``anchor`` times the features' mean squared
   distance from where the latent stage left them (it keeps them in the generator's own
   code, where its units still paint: docs/paint.md), plus, when ``perceptual`` gives
   features (e.g. the scene segmenter's encoder), their MSE times ``perceptual_weight``,
   plus, with a ``prior`` (:class:`gdx.ConceptPrior`), its pull on each concept's units
   where the photo shows the concept (without it, erasing a photo's tree removed ~20%).

Both stages stop early once every image's pixel MSE is under ``tolerance``. Everything
is deterministic for a given ``seed`` (the only randomness is the candidate latents).

The result is an :class:`Inversion`; :meth:`Inversion.as_generator` is a
:class:`gdx.Generator` whose latent ``i`` is photo ``i``, so ``intervene``,
``causal_effect`` and :class:`gdx.paint.PaintEngine` edit it like any sample. Its
``generate`` composites: the image is ``photo + (edited - reconstruction) * m``, where
``m`` is where the edit changed the layer's features, dilated by ``margin`` feature cells
and smoothed. Without edits that is the photo, bit for bit; far from a brush stroke it
stays the photo.

>>> inv = gdx.invert(gen, photos, layer="layer6")          # photos: N x 3 x 64 x 64 in [-1, 1]
>>> inv.psnr()                                              # of the raw reconstruction
>>> painted = gdx.PaintEngine(inv.as_generator(), dissection, engine.quantiles)
>>> with gdx.intervene(inv.as_generator(), "layer6", trees, value="q99", region=brush) as ...
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from gdx.concept_prior import ConceptPrior
from gdx.errors import InversionError, SettingsError
from gdx.interfaces import Generator, Segmenter
from gdx.tracing import Trace, resolve_layers

#: ``features(images) -> [tensor, ...]``: differentiable features for the perceptual loss.
FeatureFn = Callable[[torch.Tensor], Sequence[torch.Tensor]]
FORMAT = "gdx-inversion/1"


class _Encoder(Protocol):
    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


@dataclasses.dataclass(frozen=True)
class InversionSettings:
    """How an :class:`Inversion` was made (saved with it)."""

    layer: str
    seed: int = 0
    candidates: int = 32
    latent_steps: int = 50
    feature_steps: int = 150
    latent_lr: float = 0.05
    feature_lr: float = 0.05
    perceptual_weight: float = 0.0
    tolerance: float = 1e-3
    anchor: float = 0.1
    warm_start: str = "candidates"  # or "encoder"
    prior: str = ""  # the concept prior's description (ConceptPrior.describe), "" without one

    def check(self) -> None:
        for name in ("candidates", "latent_steps", "feature_steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0 or v > 1_000_000:
                raise SettingsError(f"{name} must be an integer in 0..1000000, got {v!r}")
        if self.candidates < 1 and self.warm_start == "candidates":
            raise SettingsError("candidates must be >= 1 when the generator has no encoder")
        for name in ("latent_lr", "feature_lr", "perceptual_weight", "tolerance", "anchor"):
            v = float(getattr(self, name))
            if not v >= 0 or v == float("inf"):
                raise SettingsError(f"{name} must be a finite number >= 0, got {v!r}")


@dataclasses.dataclass
class Inversion:
    """Photos inverted into ``generator``: a latent and a ``layer`` feature map per photo.

    ``targets`` are the photos (N x 3 x H x W in [-1, 1]); ``reconstructions`` the raw
    generator output from the optimised features (no compositing), the images the
    quality numbers (``psnr``) are about; ``losses`` each image's final pixel MSE.
    """

    generator: Generator
    settings: InversionSettings
    latents: torch.Tensor
    features: torch.Tensor
    targets: torch.Tensor
    reconstructions: torch.Tensor
    losses: torch.Tensor
    steps: tuple[int, int]  # latent steps and feature steps actually run (early stop)

    @property
    def layer(self) -> str:
        return self.settings.layer

    def __len__(self) -> int:
        return int(self.latents.shape[0])

    def psnr(self) -> torch.Tensor:
        """PSNR in dB of each reconstruction against its photo (signal range 2: [-1, 1])."""
        mse = ((self.reconstructions.clamp(-1, 1) - self.targets) ** 2).flatten(1).mean(1)
        return 10 * torch.log10(4.0 / mse.clamp_min(1e-12))

    def as_generator(self, *, composite: bool = True, margin: int = 1,
                     edit_layer: str | None = None) -> InvertedGenerator:
        """A :class:`gdx.Generator` whose latent ``[i]`` renders photo ``i`` (see the module docs).

        ``edit_layer`` (default: the inversion's layer) is where edits are looked for when
        compositing: edits on another layer are not localised (the whole image takes their change).
        """
        return InvertedGenerator(self, composite=composite, margin=margin, edit_layer=edit_layer)

    def save(self, path: str | Path) -> Path:
        """Write a safetensors file (tensors + settings in its metadata); :meth:`load` reads it."""
        from safetensors.torch import save_file

        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, "generator": str(self.generator.name),
                "settings": json.dumps(dataclasses.asdict(self.settings)), "steps": json.dumps(list(self.steps))}
        tensors = {"latents": self.latents, "features": self.features, "targets": self.targets, "losses": self.losses}
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(p), metadata=meta)
        return p

    @classmethod
    def load(cls, path: str | Path, generator: Generator) -> Inversion:
        """Read :meth:`save`'s file for ``generator`` (the one it was made with; the shapes are checked)."""
        from safetensors import SafetensorError, safe_open

        from gdx.checkpoints import existing_file

        p = existing_file(path, what="inversion")
        try:
            with safe_open(str(p), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise InversionError(f"{p} is not a readable safetensors file ({exc}); write it again with "
                                 "Inversion.save or gdx invert") from None
        if meta.get("format") != FORMAT or set(tensors) != {"latents", "features", "targets", "losses"}:
            raise InversionError(f"{p} is not a gdx inversion (format {meta.get('format')!r}); make one with gdx invert")
        settings = InversionSettings(**json.loads(meta["settings"]))
        steps = tuple(int(s) for s in json.loads(meta.get("steps", "[0, 0]")))
        device = generator.device
        features = tensors["features"].float().to(device)
        with torch.no_grad(), Trace(generator.module, settings.layer) as tr:
            generator.generate(generator.sample_latents(1, seed=0).to(device))
        if tuple(tr[settings.layer].shape[1:]) != tuple(features.shape[1:]):
            raise InversionError(
                f"{p} holds {settings.layer!r} features of shape {tuple(features.shape[1:])} but generator "
                f"{generator.name!r} makes {tuple(tr[settings.layer].shape[1:])}: load it with the generator it was made with"
            )
        latents = tensors["latents"].float().to(device)
        recon = _render(generator, settings.layer, latents, features)
        return cls(generator, settings, latents, features, tensors["targets"].float().to(device), recon,
                   tensors["losses"].float(), (steps[0], steps[1]))


class InvertedGenerator(Generator):
    """The photos of an :class:`Inversion` as a generator: latent ``[i]`` (N x 1) is photo ``i``.

    ``sample_latents(n, seed=s)`` returns photos ``s, s+1, ...`` (modulo the number of
    photos), so ``PaintEngine``'s sample ``i`` is photo ``i``. ``module`` is the base
    generator's module: edits on its layers apply as usual. The inversion's features are
    put in by a hook that runs *before* any edit on that layer, so an edit replaces them.
    """

    def __init__(self, inversion: Inversion, *, composite: bool = True, margin: int = 1,
                 edit_layer: str | None = None) -> None:
        if margin < 0:
            raise SettingsError(f"margin must be >= 0 feature cells, got {margin}")
        self.inversion = inversion
        self.base = inversion.generator
        self.composite = composite
        self.margin = int(margin)
        self.edit_layer = _edit_layer(inversion, edit_layer)
        self.name = f"{self.base.name}-inverted"
        self.default_layer = self.paint_layer = self.edit_layer
        self._reference: torch.Tensor | None = None

    @property
    def module(self) -> torch.nn.Module:
        return self.base.module

    def sample_latents(self, n: int, *, seed: int) -> torch.Tensor:
        return ((int(seed) + torch.arange(int(n))) % len(self.inversion)).float()[:, None]

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """The photo indices of latents ``z`` (N x 1 whole numbers), checked."""
        n = len(self.inversion)
        flat = z.detach().reshape(z.shape[0], -1) if z.dim() else z.reshape(1, 1)
        if flat.shape[1] != 1 or not torch.equal(flat, flat.round()) or flat.numel() and (
                float(flat.min()) < 0 or float(flat.max()) >= n):
            raise InversionError(
                f"latents of an inverted generator are photo indices, N x 1 whole numbers in 0..{n - 1}; got shape "
                f"{tuple(z.shape)}: use sample_latents(n, seed=first_photo)"
            )
        return flat[:, 0].long().cpu()

    def reference(self) -> torch.Tensor:
        """The unedited features of :attr:`edit_layer` for every photo (where edits are detected)."""
        if self._reference is None:
            inv = self.inversion
            if self.edit_layer == inv.layer:
                self._reference = inv.features
            else:
                with torch.no_grad(), Trace(self.base.module, self.edit_layer) as tr, \
                        Trace(self.base.module, inv.layer, edit=lambda _n, _o: inv.features, record=False):
                    self.base.generate(inv.latents)
                self._reference = tr[self.edit_layer]
        return self._reference

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        inv = self.inversion
        idx = self.indices(z)
        feats = inv.features[idx]
        reference = self.reference()[idx] if self.composite else None
        changed: list[torch.Tensor] = []
        modules = resolve_layers(self.base.module, [inv.layer, self.edit_layer])

        def put(_m: torch.nn.Module, _i: Any, out: torch.Tensor) -> torch.Tensor:
            return feats.to(out.device, out.dtype)

        def watch(_m: torch.nn.Module, _i: Any, out: torch.Tensor) -> None:
            assert reference is not None
            changed.append((out.detach() - reference.to(out.device, out.dtype)).abs().amax(1, keepdim=True) > 1e-6)

        # prepend: the photo's features go in before any edit hook on the same layer runs;
        # the watcher is registered last, so it sees the edited features
        handles = [modules[inv.layer].register_forward_hook(put, prepend=True)]
        try:
            if self.composite:
                handles.append(modules[self.edit_layer].register_forward_hook(watch))
            out = self.base.generate(inv.latents[idx])
        finally:
            for h in handles:
                h.remove()
        if not self.composite:
            return out
        recon, photo = inv.reconstructions[idx].to(out.device), inv.targets[idx].to(out.device)
        if changed:
            mask = changed[-1].float()
            if self.margin:
                mask = F.max_pool2d(mask, 2 * self.margin + 1, stride=1, padding=self.margin)
            mask = F.interpolate(mask, size=out.shape[-2:], mode="bilinear", align_corners=False)
        else:  # the edit layer did not run (an edit stopped the pass earlier): nothing to composite
            mask = torch.ones_like(out[:, :1])
        return photo + (out - recon) * mask

    def describe(self) -> str:
        return f"{len(self.inversion)} photos inverted into {self.base.describe()} at {self.inversion.layer}"


def _runs_before(generator: Generator, first: str, second: str, z: torch.Tensor) -> bool:
    """Whether layer ``first`` runs before layer ``second`` in a forward pass of ``z``."""
    order: list[str] = []
    modules = resolve_layers(generator.module, [first, second])
    handles = [m.register_forward_hook(lambda _m, _i, _o, n=n: order.append(n)) for n, m in modules.items()]
    try:
        with torch.no_grad():
            generator.generate(z)
    finally:
        for h in handles:
            h.remove()
    return first in order and second in order and order.index(first) < order.index(second)


def layer_for_edits(generator: Generator, edit_layer: str) -> str:
    """The layer to invert at so that edits on ``edit_layer`` work: the generator's
    ``default_layer`` when it runs before ``edit_layer`` (for the scene GAN, layer5 for
    layer6), else ``edit_layer`` itself."""
    layer = generator.default_layer
    if layer and layer != edit_layer and _runs_before(
            generator, layer, edit_layer, generator.sample_latents(1, seed=0).to(generator.device)):
        return layer
    return edit_layer


def _edit_layer(inversion: Inversion, asked: str | None) -> str:
    """``asked``, else the generator's paint layer, else the inversion's layer; it must run at or
    after the inversion's layer (an edit before it would be overwritten by the photo's features)."""
    base, layer = inversion.generator, inversion.layer
    candidate = asked or base.paint_layer or layer
    if candidate == layer or _runs_before(base, layer, candidate, inversion.latents[:1]):
        return candidate
    if asked:
        raise InversionError(f"edit layer {asked!r} runs before the inversion's layer {layer!r}, so its edits "
                             f"would be overwritten: edit {layer!r} or a later layer, or invert at an earlier one")
    return layer


def _render(generator: Generator, layer: str, latents: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """The generator's image with ``layer``'s output replaced by ``features`` (no grad)."""
    with torch.no_grad(), Trace(generator.module, layer, edit=lambda _n, _o: features, record=False):
        out = generator.generate(latents)
    return out


def perceptual_features(source: Segmenter | FeatureFn | None) -> FeatureFn | None:
    """A feature function for the perceptual loss from a segmenter or a callable.

    A segmenter (or the callable it wraps, ``.fn``) provides one through a
    ``segment_features(images) -> [tensor, ...]`` method (the bundled scene segmenter's
    encoder does); a callable is used as is.
    """
    if source is None:
        return None
    for target in (source, getattr(source, "fn", None)):
        fn = getattr(target, "segment_features", None)
        if callable(fn):
            return fn
    if isinstance(source, Segmenter):
        raise InversionError(
            f"segmenter {source.name!r} has no segment_features(images) method, so it cannot give the perceptual "
            "loss: pass perceptual=<callable returning feature tensors>, or perceptual=None for pixel loss only"
        )
    if callable(source):
        return source
    raise InversionError(f"perceptual must be a segmenter, a callable or None; got {type(source).__name__}")


def _check_images(generator: Generator, images: torch.Tensor) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3 or images.shape[0] < 1:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InversionError(f"images must be a tensor N x 3 x H x W (RGB in [-1, 1]); got {shape}")
    x = images.detach().float()
    if not torch.isfinite(x).all() or float(x.min()) < -1.001 or float(x.max()) > 1.001:
        raise InversionError(
            f"images must be RGB in [-1, 1] (got {float(x.min()):.3g}..{float(x.max()):.3g}); from uint8 use "
            "x / 127.5 - 1, or read files with gdx.photos.read_image"
        )
    return x.clamp(-1, 1).to(generator.device)


def _batched_loss(out: torch.Tensor, target: torch.Tensor, feats: FeatureFn | None,
                  target_feats: Sequence[torch.Tensor], weight: float) -> torch.Tensor:
    """Per-image loss: pixel MSE plus ``weight`` x feature MSE (N)."""
    loss = ((out - target) ** 2).flatten(1).mean(1)
    if feats is not None and weight > 0:
        for a, b in zip(feats(out.clamp(-1, 1)), target_feats):
            loss = loss + weight * ((a - b) ** 2).flatten(1).mean(1)
    return loss


def _steps(n: int, desc: str, progress: bool) -> Iterator[int]:
    if not progress:
        return iter(range(n))
    from tqdm.auto import tqdm

    it: Iterator[int] = iter(tqdm(range(n), desc=desc, unit="step", leave=False))
    return it


def invert(
    generator: Generator,
    images: torch.Tensor,
    *,
    layer: str | None = None,
    seed: int = 0,
    candidates: int = 32,
    latent_steps: int = 50,
    feature_steps: int = 150,
    latent_lr: float = 0.05,
    feature_lr: float = 0.05,
    perceptual: Segmenter | FeatureFn | None = None,
    perceptual_weight: float = 0.01,
    tolerance: float = 1e-3,
    anchor: float = 0.1,
    encoder: _Encoder | None = None,
    prior: ConceptPrior | None = None,
    progress: bool = False,
) -> Inversion:
    """Invert ``images`` (N x 3 x H x W in [-1, 1], the generator's size) into ``layer``.

    ``layer`` defaults to the generator's ``default_layer`` (else ``paint_layer``). For the
    scene GAN that is ``layer5``, one layer before the paint layer ``layer6``: optimising the
    paint layer itself reconstructs as well but paints worse (its features leave the
    generator's own code; docs/paint.md measures both), while ``layer6`` computed by the
    GAN from an optimised ``layer5`` still paints like a sample.
    ``perceptual``: a segmenter with ``segment_features`` or a callable giving feature
    tensors; its features' MSE (times ``perceptual_weight``) joins the pixel MSE. ``anchor``
    weighs the pull of the features towards the latent stage's own. The encoder warm start is ``encoder`` or the generator's ``encode`` method when it has one.
    ``prior`` (a :class:`gdx.ConceptPrior`, e.g. ``PaintEngine.photo_prior(segmenter)``) keeps
    the concepts the segmenter finds in each photo in the generator's own units on the prior's
    layer, so that switching those units off (GANPaint's erase) removes them.
    See the module docstring for the method; docs/paint.md for measured quality and time.

    >>> inv = gdx.invert(gen, photos, layer="layer6", perceptual=seg)
    >>> inv.psnr().mean(), inv.as_generator().generate(torch.zeros(1, 1))  # photo 0
    """
    layer = layer or generator.default_layer or generator.paint_layer
    if not layer:
        raise InversionError(f"generator {generator.name!r} has no paint or default layer: pass layer=...")
    resolve_layers(generator.module, layer)
    encode = encoder if encoder is not None else getattr(generator, "encode", None)
    settings = InversionSettings(layer, int(seed), int(candidates), int(latent_steps), int(feature_steps),
                                 float(latent_lr), float(feature_lr), float(perceptual_weight) if perceptual else 0.0,
                                 float(tolerance), float(anchor), "encoder" if callable(encode) else "candidates",
                                 prior.describe() if prior is not None and prior.weight > 0 else "")
    settings.check()
    x = _check_images(generator, images)
    # the concept prior's layer, when it is not the inverted one: its activations are read in the loss
    watched = prior.layer if prior is not None and prior.weight > 0 and prior.layer != layer else None
    if watched is not None:
        resolve_layers(generator.module, watched)
        if not _runs_before(generator, layer, watched, generator.sample_latents(1, seed=seed).to(generator.device)):
            raise InversionError(f"the concept prior's layer {watched!r} does not run after the inversion's layer "
                                 f"{layer!r}, so the optimised features cannot move it: invert at an earlier layer "
                                 "or measure the prior on a later one")
    feats = perceptual_features(perceptual)
    weight = settings.perceptual_weight
    with torch.no_grad(), Trace(generator.module, [layer] + ([watched] if watched else [])) as tr:
        probe = generator.generate(generator.sample_latents(1, seed=seed).to(generator.device))
    prior_grid = tr[watched].shape[-2:] if watched else tr[layer].shape[-2:]
    if tuple(probe.shape[-2:]) != tuple(x.shape[-2:]):
        raise InversionError(
            f"images are {tuple(x.shape[-2:])} but {generator.name!r} makes {tuple(probe.shape[-2:])} images: resize them "
            "first (gdx.photos.read_image(path, size=...) does)"
        )
    if tr[layer].dim() != 4:
        raise InversionError(f"layer {layer!r} outputs shape {tuple(tr[layer].shape)}; invert needs an N x U x h x w layer")
    params = [p for p in generator.module.parameters()]
    grads = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)  # only the latents and features are optimised
    try:
        with torch.no_grad():
            target_feats = [f.detach() for f in feats(x)] if feats is not None and weight > 0 else []
            z = _warm_start(generator, x, encode, settings)
        z, s1 = _optimise(lambda v: generator.generate(v), z, x, settings.latent_lr, settings.latent_steps, settings,
                          feats, target_feats, "latent", progress)
        with torch.no_grad(), Trace(generator.module, layer) as tr:
            generator.generate(z)
        h = tr[layer].detach().clone()
        seen: dict[str, torch.Tensor] = {}
        prior_loss = None
        if prior is not None and prior.weight > 0:
            targets = prior.targets(x, prior_grid)

            def prior_loss(v: torch.Tensor) -> torch.Tensor:
                acts = seen[watched] if watched else v
                return prior.weight * prior.loss(acts, targets)

        def keep(name: str, out: torch.Tensor) -> torch.Tensor:
            seen.setdefault(name, out)  # the first call (a step window's first step)
            return out

        def tail(v: torch.Tensor) -> torch.Tensor:
            seen.clear()
            with contextlib.ExitStack() as hooks:
                hooks.enter_context(Trace(generator.module, layer, edit=lambda _n, _o: v, record=False))
                if watched is not None:
                    hooks.enter_context(Trace(generator.module, watched, edit=keep, record=False))
                return generator.generate(z)

        h, s2 = _optimise(tail, h, x, settings.feature_lr, settings.feature_steps, settings, feats, target_feats,
                          "features", progress, anchor=settings.anchor, extra=prior_loss)
    finally:
        for p, g in zip(params, grads):
            p.requires_grad_(g)
    recon = _render(generator, layer, z, h)
    losses = ((recon - x) ** 2).flatten(1).mean(1).cpu()
    return Inversion(generator, settings, z, h, x, recon, losses, (s1, s2))


def _warm_start(generator: Generator, x: torch.Tensor, encode: _Encoder | None,
                settings: InversionSettings) -> torch.Tensor:
    """Latents to start from: the encoder's, else each image's best of the candidate latents."""
    if encode is not None:
        return encode(x).detach().float().to(generator.device)
    best_err = torch.full((x.shape[0],), float("inf"), device=x.device)
    best: torch.Tensor | None = None
    rows = generator.latent_rows(settings.candidates, seed=settings.seed)
    for start in range(0, settings.candidates, 32):
        zc = rows.rows(start, min(settings.candidates, start + 32)).to(generator.device)
        imgs = generator.generate(zc)
        err = ((imgs[None] - x[:, None]) ** 2).flatten(2).mean(2)  # N x K
        e, k = err.min(1)
        if best is None:
            best = zc[k].clone()
        better = e < best_err
        best[better] = zc[k][better]
        best_err = torch.where(better, e, best_err)
    assert best is not None
    return best


def _optimise(render: Callable[[torch.Tensor], torch.Tensor], init: torch.Tensor, x: torch.Tensor, lr: float,
              steps: int, settings: InversionSettings, feats: FeatureFn | None, target_feats: Sequence[torch.Tensor],
              what: str, progress: bool, anchor: float = 0.0,
              extra: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, int]:
    """Adam on ``init`` (one entry per image) against the photos; stops when all losses < tolerance.

    ``extra(v)``, called after each render, adds a per-image term (the concept prior)."""
    v = init.detach().clone().requires_grad_(True)
    if steps == 0:
        return v.detach(), 0
    opt = torch.optim.Adam([v], lr=lr)
    done = 0
    for _ in _steps(steps, f"inverting ({what})", progress):
        out = render(v)
        per_image = _batched_loss(out, x, feats, target_feats, settings.perceptual_weight)
        if anchor > 0:  # keep the features near the generator's own (those of the optimised latent)
            per_image = per_image + anchor * ((v - init) ** 2).flatten(1).mean(1)
        if extra is not None:
            per_image = per_image + extra(v)
        pixel = ((out.detach() - x) ** 2).flatten(1).mean(1)
        if bool((pixel < settings.tolerance).all()):
            break
        opt.zero_grad(set_to_none=True)
        per_image.sum().backward()
        opt.step()
        done += 1
    if not torch.isfinite(v).all():
        raise InversionError(f"the {what} stage diverged (non-finite values); lower the learning rate ({lr})")
    return v.detach(), done
