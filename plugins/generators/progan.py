"""The "progan" generator: gandissect's ProGAN checkpoints, by path or by published name.

Accepted files (``torch.load(weights_only=True)`` only):

* a plain state dict in gandissect's layout (``layerK.conv.weight``, ``layerK.wscale.b``,
  ``output_RxR.conv.weight``, ``output_RxR.wscale.b``), as the ``*_lsun.pth`` files;
* the same nested under ``state_dict``;
* the older ``features.N.*`` / ``output.*`` naming, converted as gandissect's
  ``state_dict_from_old_pt_dict`` does (``features.i`` -> ``layer{i+1}``,
  ``output.*`` -> ``output_RxR.*``).

The architecture is :mod:`gdx.plugins.generators.progan_arch`; resolution and channel
depths are read off the keys. Latents are z ~ N(0, 1) in R^z_dim drawn with
:func:`gdx.seeded_normal`. Hookable layers: ``layer1`` ... ``layerN`` (``layer1``/
``layer2`` at 4x4, then two per resolution; ``layer4`` is 8x8), each with sub-modules
``norm``, ``conv``, ``wscale``, ``relu`` (and ``up`` for upsampling blocks), then
``output_RxR``.

Known names (``churchoutdoor``, ``bedroom``, ``kitchen``, ``conferenceroom``,
``diningroom``, ``livingroom``, ``restaurant``) resolve to ``{name}_lsun.pth`` in the
weights cache (``$GDX_CACHE/weights``, default ``~/.cache/gdx/weights``) and are
downloaded from ``base_url`` when missing. The original location is reported dead
(gandissect issue #25): set a mirror with ``base_url=...`` or ``GDX_PROGAN_URL``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

import gdx
from gdx.checkpoints import existing_file, load_torch_file
from gdx.errors import CheckpointError
from gdx.plugins.generators.downloads import KnownWeights, cache_dir, fetch, sha256_of
from gdx.plugins.generators.progan_arch import ProgressiveGenerator, sizes_from_state_dict
from gdx.plugins.generators.sniff import describe_keys
from gdx.hookspecs import Register

#: gandissect's published ProGAN models (LSUN scene categories, 256x256).
KNOWN_MODELS: tuple[str, ...] = (
    "bedroom",
    "churchoutdoor",
    "conferenceroom",
    "diningroom",
    "kitchen",
    "livingroom",
    "restaurant",
)

#: Where gandissect published them; reported dead, kept as the default so a restored
#: server works again without a release. Override with base_url= or GDX_PROGAN_URL.
DEFAULT_BASE_URL = "http://gandissect.csail.mit.edu/models/"

#: SHA-256 of known files, checked after download when present. None are recorded
#: yet (the originals cannot be fetched to hash them); pass sha256=... to check a mirror.
KNOWN_SHA256: dict[str, str] = {}

WHAT = "progan weights"


def resolve_weights(weights: str, *, base_url: str | None = None, sha256: str | None = None,
                    download: bool = True) -> Path:
    """The local file for ``weights``: an existing path, or a known name (fetched if needed).

    An existing file is always used as it is, whatever its name. A value that looks
    like a path (a folder part, or ending in ``.pth``/``.pt``) is never downloaded: a
    bare known file name (``churchoutdoor_lsun.pth``) that is not in the current folder
    is looked up in the weights cache, anything else must exist. Only a bare known
    name (``churchoutdoor``) is fetched from ``base_url`` when it is not cached.
    """
    name = weights.strip()
    given = Path(name).expanduser()
    key = name.lower().removesuffix("_lsun.pth").removesuffix("_lsun")
    looks_like_path = os.sep in name or "/" in name or name.endswith((".pth", ".pt"))
    if given.exists():
        path = existing_file(name, what=WHAT)
        _check_sha256(path, sha256)
        return path
    if key in KNOWN_MODELS and given.parent == Path("."):
        filename = f"{key}_lsun.pth"
        dest = cache_dir() / filename
        if dest.exists():
            _check_sha256(dest, sha256)
            return dest
        if looks_like_path:
            raise CheckpointError(
                f"{WHAT}: there is no file {name} in the current folder ({Path.cwd()}) nor at {dest}. "
                f"A file name is used as a path and never downloaded: put the file in one of those places "
                f"(`gdx weights` lists the known files), pass its full path as the generator option "
                f"`weights=...`, or pass `weights={key}` to download it from a mirror (the generator "
                f"option `base_url=...`)."
            )
        base = base_url or os.environ.get("GDX_PROGAN_URL") or DEFAULT_BASE_URL
        if not download:
            raise CheckpointError(
                f"{WHAT}: {filename} is not in the cache. Obtain it and put it at {dest} "
                f"(or pass the generator option `download=true` with the generator option `base_url=<mirror>`)."
            )
        url = base.rstrip("/") + "/" + filename
        return fetch(url, dest, sha256=sha256 or KNOWN_SHA256.get(filename), what=WHAT)
    if not looks_like_path:
        raise CheckpointError(
            f"{WHAT}: {name!r} is neither a file nor a known model. Known names: "
            f"{', '.join(KNOWN_MODELS)}; or pass the path of a .pth file."
        )
    return existing_file(name, what=WHAT)


def _check_sha256(path: Path, sha256: str | None) -> None:
    if sha256 is not None and sha256_of(path).lower() != sha256.lower():
        raise CheckpointError(f"{WHAT}: {path} does not match sha256={sha256}; delete it and obtain it again.")


def known_weights() -> list[KnownWeights]:
    """gandissect's published ProGAN checkpoints (LSUN, 256 x 256), for ``gdx weights``."""
    return [
        KnownWeights(
            adapter="progan", name=key, file=f"{key}_lsun.pth", sha256=KNOWN_SHA256.get(f"{key}_lsun.pth"),
            size=None, option=f"weights={key}",
            note=("gandissect's ProGAN models (LSUN scenes, 256 px); a short name is downloaded only from a "
                  "mirror you name (the generator option `base_url=...` or GDX_PROGAN_URL)"),
        )
        for key in KNOWN_MODELS
    ]


def progan_state_dict(obj: object, *, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """gandissect-layout state dict from a loaded checkpoint (plain, nested or old naming)."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{WHAT}: {source} holds a {type(obj).__name__}, not a state dict. Save the "
            "generator with torch.save(model.state_dict(), path)."
        )
    sd = {k.removeprefix("module."): v for k, v in obj.items()}
    if "features.0.conv.weight" in sd:
        sd = _from_old_naming(sd, source=source)
    if "layer1.conv.weight" not in sd:
        raise CheckpointError(
            f"{WHAT}: {source} is not a ProGAN generator; it looks like {describe_keys(sd)}."
        )
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{WHAT}: {source} has non-tensor entries {bad[:5]}; expected a state dict.")
    return sd


def _from_old_naming(sd: dict[str, torch.Tensor], *, source: str) -> dict[str, torch.Tensor]:
    # As gandissect's state_dict_from_old_pt_dict: features.i -> layer{i+1}; output -> output_RxR.
    out: dict[str, torch.Tensor] = {}
    i = 0
    while f"features.{i}.conv.weight" in sd:
        out[f"layer{i + 1}.conv.weight"] = sd[f"features.{i}.conv.weight"]
        try:
            out[f"layer{i + 1}.wscale.b"] = sd[f"features.{i}.wscale.b"]
        except KeyError:
            raise CheckpointError(f"{WHAT}: {source} lacks features.{i}.wscale.b; the file is incomplete.") from None
        i += 1
    res = 4 * 2 ** ((i - 1) // 2)
    for part in ("conv.weight", "wscale.b"):
        if f"output.{part}" not in sd:
            raise CheckpointError(f"{WHAT}: {source} lacks output.{part}; the file is incomplete.")
        out[f"output_{res}x{res}.{part}"] = sd[f"output.{part}"]
    return out


def build_from_state_dict(sd: dict[str, torch.Tensor], *, source: str = "checkpoint") -> ProgressiveGenerator:
    """A :class:`ProgressiveGenerator` sized from ``sd`` with ``sd`` loaded (strictly)."""
    sizes = sizes_from_state_dict(sd)
    n_layers = 2 * (len(sizes) - 1)
    if len(sizes) < 2 or any(f"layer{k}.conv.weight" not in sd for k in range(1, n_layers + 1)):
        raise CheckpointError(f"{WHAT}: {source} has an incomplete set of layerK.conv.weight keys.")
    try:
        net = ProgressiveGenerator(sizes=sizes)
        net.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(
            f"{WHAT}: {source} does not fit a ProGAN of depths {sizes} "
            f"({' '.join(first[:2])[:300]}). The file may be damaged or of another variant."
        ) from None
    return net.eval()


def build_progan(
    weights: str = "churchoutdoor",
    base_url: str | None = None,
    sha256: str | None = None,
    download: bool = True,
    device: str = "cpu",
) -> gdx.Generator:
    """ProGAN (gandissect .pth: path or known LSUN name); layers layer1..layerN.

    Args:
        weights: a .pth file, or a known LSUN name such as churchoutdoor (gdx weights lists them)
        base_url: where to download known names from when they are not cached
        sha256: expected SHA-256 of the file (checked before loading)
        download: allow downloading a known name that is not cached
        device: torch device to run on (cpu, cuda, cuda:1, ...)
    """
    path = resolve_weights(weights, base_url=base_url, sha256=sha256, download=download)
    obj = load_torch_file(path, what=WHAT)
    sd = progan_state_dict(obj, source=str(path))
    net = build_from_state_dict(sd, source=str(path))
    # layer4 (512 x 8 x 8 at 256 px) is the paper's canonical layer.
    default = "layer4" if "layer4" in dict(net.named_children()) else "layer2"
    gen = gdx.wrap_generator(net, latent_shape=(net.z_dim,), name="progan", default_layer=default)
    return gen.to(device)


@gdx.hookimpl
def register_generators(register: Register) -> None:
    register("progan", build_progan)
