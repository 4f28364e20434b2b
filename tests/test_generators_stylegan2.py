"""The stylegan2 generator: NVIDIA .pkl (restricted unpickler), rosinality .pt, errors."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest
import torch

import gdx
from gen_formats import (
    persistent,
    rosinality_forward,
    tiny_progan,
    tiny_stylegan2,
    to_rosinality,
    write_nvidia_pkl,
    write_progan,
    write_rosinality_pt,
    write_stylegan3_pkl,
    _fake_nvidia_modules,
)
from gdx.errors import UnsafePickleError
from gdx.plugins.generators.safe_unpickle import PersistentObject, load_stylegan_pickle, safe_loads


# -- NVIDIA .pkl ----------------------------------------------------------------------

def test_nvidia_pickle_loads_back_bit_for_bit(tmp_path):
    net = tiny_stylegan2(seed=1)
    path = write_nvidia_pkl(net, tmp_path / "network-snapshot-000100.pkl")
    gen = gdx.load_generator("stylegan2", weights=str(path))
    z = gen.sample_latents(3, seed=4)
    assert z.shape == (3, 16) and torch.equal(z, gdx.seeded_normal(3, (16,), 4))
    with torch.no_grad():
        out = gen.generate(z)
        assert out.shape == (3, 3, 16, 16) and out.dtype == torch.float32 and torch.isfinite(out).all()
        assert torch.equal(out, net(z))
        assert torch.equal(gen.generate(z), out), "const noise must make outputs reproducible"
    for name in ("mapping.fc0", "synthesis.b4.conv1", "synthesis.b8.conv0", "synthesis.b16.conv1",
                 "synthesis.b16.torgb"):
        assert name in gen.layer_names()
    # Nothing of NVIDIA's code was imported or exec'd to load it.
    assert "torch_utils" not in sys.modules and "dnnlib" not in sys.modules
    assert not any(m.startswith("_imported_module_") for m in sys.modules)


def test_the_unpickler_recovers_every_tensor_and_init_kwargs(tmp_path):
    net = tiny_stylegan2(seed=2)
    data = load_stylegan_pickle(write_nvidia_pkl(net, tmp_path / "s.pkl"))
    assert set(data) == {"training_set_kwargs", "G", "D", "G_ema", "augment_pipe"}
    g = data["G_ema"]
    assert isinstance(g, PersistentObject) and g.class_name == "Generator"
    assert g.init_kwargs["z_dim"] == 16 and g.init_kwargs["mapping_kwargs"]["num_layers"] == 3
    assert g.init_kwargs["mapping_kwargs"].num_layers == 3  # EasyDict attribute access
    tensors = g.tensors()
    expected = net.state_dict()
    assert tensors.keys() == expected.keys()
    assert all(torch.equal(tensors[k], expected[k]) for k in expected)
    assert data["D"].class_name == "Discriminator" and "b4.conv.weight" in data["D"].tensors()


def test_conv_clamp_truncation_and_w_latents(tmp_path):
    net = tiny_stylegan2(seed=3, conv_clamp=0.3)
    path = write_nvidia_pkl(net, tmp_path / "c.pkl")
    z = gdx.seeded_normal(2, (16,), 0)
    gen = gdx.load_generator("stylegan2", weights=str(path), truncation=0.6)
    with torch.no_grad():
        assert torch.equal(gen.generate(z), net(z, truncation_psi=0.6))
        assert not torch.equal(gen.generate(z), net(z))
        unclamped = tiny_stylegan2(seed=3)
        assert not torch.equal(net(z), unclamped(z)), "the clamp must matter for this test to mean anything"
    gw = gdx.load_generator("stylegan2", weights=str(path), latent="w", truncation=0.6)
    w = gw.sample_latents(2, seed=0)
    assert w.shape == (2, 16)
    with torch.no_grad():
        assert torch.equal(gw.generate(w), net(z, truncation_psi=0.6))


def test_conditional_models_take_a_class_index(tmp_path):
    net = tiny_stylegan2(seed=4, c_dim=3)
    path = write_nvidia_pkl(net, tmp_path / "cond.pkl")
    with pytest.raises(gdx.AdapterOptionError, match="pass the generator option `class_index=K`"):
        gdx.load_generator("stylegan2", weights=str(path))
    gen = gdx.load_generator("stylegan2", weights=str(path), class_index=2)
    z = gen.sample_latents(2, seed=1)
    c = torch.zeros(2, 3)
    c[:, 2] = 1
    with torch.no_grad():
        assert torch.equal(gen.generate(z), net(z, c))


def test_random_and_no_noise_modes(tmp_path):
    net = tiny_stylegan2(seed=5)
    path = write_nvidia_pkl(net, tmp_path / "n.pkl")
    z = gdx.seeded_normal(1, (16,), 0)
    with torch.no_grad():
        rnd = gdx.load_generator("stylegan2", weights=str(path), noise="random")
        assert not torch.equal(rnd.generate(z), rnd.generate(z))
        off = gdx.load_generator("stylegan2", weights=str(path), noise="none")
        assert torch.equal(off.generate(z), net(z, noise_mode="none"))
    with pytest.raises(gdx.AdapterOptionError, match="noise"):
        gdx.load_generator("stylegan2", weights=str(path), noise="loud")
    with pytest.raises(gdx.AdapterOptionError, match="latent"):
        gdx.load_generator("stylegan2", weights=str(path), latent="x")


class _RunsCode:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("where", ["top", "inside_network_state"])
def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path, where):
    marker = tmp_path / "pwned"
    payload = _RunsCode(f"touch {marker}")
    path = tmp_path / "evil.pkl"
    if where == "top":
        path.write_bytes(pickle.dumps({"G_ema": payload}))
    else:
        net = tiny_stylegan2()
        with _fake_nvidia_modules():
            wrapped = persistent(net)
            wrapped.meta["state"]["_modules"]["mapping"].meta["state"]["payload"] = payload
            path.write_bytes(pickle.dumps({"G_ema": wrapped}))
    with pytest.raises(gdx.CheckpointError, match="refused") as info:
        gdx.load_generator("stylegan2", weights=str(path))
    assert "system" in str(info.value)
    assert not marker.exists()
    # The payload is live: plain pickle (in a child process) does run it.
    subprocess.run([sys.executable, "-c", "import pickle,sys; pickle.load(open(sys.argv[1],'rb'))", str(path)],
                   check=False, capture_output=True)
    if where == "top":
        assert marker.exists()


@pytest.mark.parametrize("module,name", [
    ("builtins", "exec"), ("builtins", "eval"), ("builtins", "getattr"), ("os", "system"),
    ("torch_utils.persistence", "_src_to_module"), ("subprocess", "Popen"), ("torch", "load"),
])
def test_only_the_allow_list_resolves(module, name):
    with pytest.raises(UnsafePickleError):
        safe_loads(_global_pickle(module, name))


def _global_pickle(module: str, name: str) -> bytes:
    """A protocol-4 pickle that only looks up ``module.name`` (STACK_GLOBAL)."""
    def short(text: str) -> bytes:
        return b"\x8c" + bytes([len(text)]) + text.encode()

    return b"\x80\x04" + short(module) + short(name) + b"\x93."


def test_stylegan3_pickles_are_named_and_refused(tmp_path):
    path = write_stylegan3_pkl(tmp_path / "sg3.pkl")
    with pytest.raises(gdx.CheckpointError, match="StyleGAN3") as info:
        gdx.load_generator("stylegan2", weights=str(path))
    assert "only the StyleGAN2" in str(info.value)


def test_truncated_missing_and_foreign_files(tmp_path):
    path = write_nvidia_pkl(tiny_stylegan2(), tmp_path / "s.pkl")
    data = path.read_bytes()
    (tmp_path / "cut.pkl").write_bytes(data[: len(data) // 3])
    with pytest.raises(gdx.CheckpointError, match="truncated"):
        gdx.load_generator("stylegan2", weights=str(tmp_path / "cut.pkl"))
    with pytest.raises(gdx.CheckpointError, match="not found"):
        gdx.load_generator("stylegan2", weights=str(tmp_path / "none.pkl"))
    progan = write_progan(tiny_progan(), tmp_path / "church.pth")
    with pytest.raises(gdx.CheckpointError, match="ProGAN"):
        gdx.load_generator("stylegan2", weights=str(progan))
    only_d = tmp_path / "d.pkl"
    disc = torch.nn.Module()
    disc.b4 = torch.nn.Module()
    disc.b4.conv = torch.nn.Linear(2, 2)
    disc.b4.out = torch.nn.Linear(2, 1)
    with _fake_nvidia_modules():
        only_d.write_bytes(pickle.dumps({"G_ema": persistent(disc, class_name="Discriminator")}))
    with pytest.raises(gdx.CheckpointError, match="discriminator"):
        gdx.load_generator("stylegan2", weights=str(only_d))
    tf = tmp_path / "tf.pkl"
    tf.write_bytes(_global_pickle("dnnlib.tflib.network", "Network"))
    with pytest.raises(gdx.CheckpointError, match="TensorFlow"):
        gdx.load_generator("stylegan2", weights=str(tf))


# -- rosinality .pt -------------------------------------------------------------------

def test_rosinality_checkpoint_matches_the_original_and_rosinality_math(tmp_path):
    net = tiny_stylegan2(seed=6, resolution=32)
    path = write_rosinality_pt(net, tmp_path / "550000.pt")
    gen = gdx.load_generator("stylegan2", weights=str(path), truncation=0.7)
    z = gen.sample_latents(2, seed=2)
    with torch.no_grad():
        out = gen.generate(z)
        assert out.shape == (2, 3, 32, 32)
        torch.testing.assert_close(out, net(z, truncation_psi=0.7), atol=1e-5, rtol=0)
        reference = rosinality_forward(to_rosinality(net), z, truncation=0.7, latent_avg=net.mapping.w_avg)
        torch.testing.assert_close(out, reference, atol=1e-5, rtol=0)
    assert "synthesis.b32.conv0" in gen.layer_names()


def test_rosinality_without_args_or_latent_avg_and_bare_g_ema(tmp_path):
    net = tiny_stylegan2(seed=7)
    path = write_rosinality_pt(net, tmp_path / "bare.pt", with_args=False, with_latent_avg=False)
    gen = gdx.load_generator("stylegan2", weights=str(path), truncation=0.5)
    w_avg = gen.module.mapping.w_avg
    with torch.no_grad():
        expected = net.mapping(gdx.seeded_normal(4096, (16,), 0))[:, 0].mean(0)
    torch.testing.assert_close(w_avg, expected)
    torch.save(to_rosinality(net), tmp_path / "g_ema_only.pt")
    gen2 = gdx.load_generator("stylegan2", weights=str(tmp_path / "g_ema_only.pt"))
    z = gdx.seeded_normal(2, (16,), 0)
    with torch.no_grad():
        torch.testing.assert_close(gen2.generate(z), net(z), atol=1e-5, rtol=0)


def test_rosinality_errors(tmp_path):
    torch.save({"g_ema": {"weight": torch.zeros(2)}}, tmp_path / "x.pt")
    with pytest.raises(gdx.CheckpointError, match="not a rosinality"):
        gdx.load_generator("stylegan2", weights=str(tmp_path / "x.pt"))
    g = to_rosinality(tiny_stylegan2())
    del g["to_rgbs.0.conv.modulation.bias"]
    torch.save({"g_ema": g}, tmp_path / "partial.pt")
    with pytest.raises(gdx.CheckpointError, match="incomplete"):
        gdx.load_generator("stylegan2", weights=str(tmp_path / "partial.pt"))
    path = write_rosinality_pt(tiny_stylegan2(), tmp_path / "r.pt")
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(gdx.CheckpointError, match="truncated"):
        gdx.load_generator("stylegan2", weights=str(tmp_path / "cut.pt"))


def test_hooks_on_documented_layers_see_the_feature_maps(tmp_path):
    path = write_nvidia_pkl(tiny_stylegan2(), tmp_path / "s.pkl")
    gen = gdx.load_generator("stylegan2", weights=str(path))
    z = gen.sample_latents(2, seed=0)
    with torch.no_grad():
        with gdx.Trace(gen.module, ["synthesis.b8.conv0", "synthesis.b16.conv1", "mapping.fc2"]) as tr:
            base = gen.generate(z)
        assert tr["synthesis.b8.conv0"].shape == (2, 16, 8, 8)
        assert tr["synthesis.b16.conv1"].shape == (2, 8, 16, 16)
        assert tr["mapping.fc2"].shape == (2, 16)
        with gdx.Trace(gen.module, ["synthesis.b8.conv1"], edit=lambda name, out: out * 0):
            edited = gen.generate(z)
    assert not torch.equal(base, edited)


def test_every_listed_layer_yields_one_tensor(tmp_path):
    gen = gdx.load_generator("stylegan2", weights=str(write_nvidia_pkl(tiny_stylegan2(), tmp_path / "s.pkl")))
    layers = gen.layer_names()
    assert "synthesis.b8" not in layers and "synthesis.b8.conv1" in layers
    with torch.no_grad(), gdx.Trace(gen.module, layers) as tr:
        gen.generate(gen.sample_latents(1, seed=0))
    assert all(isinstance(tr[n], torch.Tensor) for n in layers)


def test_a_plain_nvidia_state_dict_loads_bit_for_bit(tmp_path):
    net = tiny_stylegan2(seed=8)
    torch.save(net.state_dict(), tmp_path / "g.pt")
    torch.save({"G_ema": net.state_dict()}, tmp_path / "nested.pt")
    z = gdx.seeded_normal(2, (16,), 0)
    for name in ("g.pt", "nested.pt"):
        gen = gdx.load_generator("stylegan2", weights=str(tmp_path / name))
        with torch.no_grad():
            assert torch.equal(gen.generate(z), net(z))


@pytest.mark.parametrize("name", ["legacy.pt", "legacy.pkl"])
def test_legacy_format_torch_files_load_whatever_their_extension(tmp_path, name):
    net = tiny_stylegan2(seed=9)
    g = to_rosinality(net)
    torch.save({"g_ema": g, "latent_avg": net.mapping.w_avg}, tmp_path / name, _use_new_zipfile_serialization=False)
    assert (tmp_path / name).read_bytes()[:1] == b"\x80"
    gen = gdx.load_generator("stylegan2", weights=str(tmp_path / name))
    z = gdx.seeded_normal(2, (16,), 0)
    with torch.no_grad():
        torch.testing.assert_close(gen.generate(z), net(z), atol=1e-5, rtol=0)


def test_truncation_uses_each_formats_own_formula_bit_for_bit(tmp_path):
    """rosinality truncates as ``tl + psi * (w - tl)``, NVIDIA as ``w_avg.lerp(w, psi)``: both exact."""
    net = tiny_stylegan2(seed=8)
    rosi = gdx.load_generator("stylegan2", weights=str(write_rosinality_pt(net, tmp_path / "r.pt")),
                              latent="w", truncation=0.7)
    nvidia = gdx.load_generator("stylegan2", weights=str(write_nvidia_pkl(net, tmp_path / "n.pkl")),
                                latent="w", truncation=0.7)
    z = gdx.seeded_normal(256, (16,), 3)
    with torch.no_grad():
        for gen, formula in ((rosi, lambda tl, w: tl + 0.7 * (w - tl)), (nvidia, lambda tl, w: tl.lerp(w, 0.7))):
            m = gen.module.mapping
            free = m(z, truncation_psi=1.0)[:, 0]
            got = gen.sample_latents(256, seed=3)
            assert torch.equal(got, formula(m.w_avg, free))
        tl, free = rosi.module.mapping.w_avg, rosi.module.mapping(z)[:, 0]
        assert not torch.equal(tl + 0.7 * (free - tl), tl.lerp(free, 0.7))  # the two formulas do differ


def test_conv_clamp_option_restores_a_re_exported_snapshots_clamp(tmp_path):
    """A plain ``G.state_dict()`` drops conv_clamp; the option puts it back (bit for bit)."""
    net = tiny_stylegan2(seed=3, conv_clamp=0.3)
    torch.save(net.state_dict(), tmp_path / "g.pt")
    z = gdx.seeded_normal(2, (16,), 0)
    plain = gdx.load_generator("stylegan2", weights=str(tmp_path / "g.pt"))
    clamped = gdx.load_generator("stylegan2", weights=str(tmp_path / "g.pt"), conv_clamp=0.3)
    with torch.no_grad():
        assert not torch.equal(plain.generate(z), net(z)), "the clamp must bind for this test to mean anything"
        assert torch.equal(clamped.generate(z), net(z))
    with pytest.raises(gdx.GdxError, match="conv_clamp=-1: expected a positive number"):
        gdx.load_generator("stylegan2", weights=str(tmp_path / "g.pt"), conv_clamp=-1)
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"G_ema": _RunsCode("true")}))
    with pytest.raises(gdx.CheckpointError, match=r"generator option `conv_clamp=256`.*use conv_clamp=256"):
        gdx.load_generator("stylegan2", weights=str(evil))
