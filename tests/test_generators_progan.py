"""The progan generator: gandissect formats, known names via the cache and a mirror, errors."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from pathlib import Path

import pytest
import torch

import gdx
from gen_formats import tiny_progan, tiny_stylegan2, write_progan
from gdx.plugins.generators import progan as progan_mod


@pytest.mark.parametrize("layout,legacy", [("plain", True), ("plain", False), ("nested", False), ("old", True)])
def test_every_gandissect_layout_loads_back_exactly(tmp_path, layout, legacy):
    net = tiny_progan(seed=1)
    path = write_progan(net, tmp_path / "g.pth", layout=layout, legacy=legacy)
    gen = gdx.load_generator("progan", weights=str(path))
    z = gen.sample_latents(3, seed=5)
    assert z.shape == (3, 16)
    assert torch.equal(z, gdx.seeded_normal(3, (16,), 5))
    with torch.no_grad():
        out = gen.generate(z)
        assert out.shape == (3, 3, 16, 16) and out.dtype == torch.float32
        assert torch.equal(out, net(z))
    assert [n for n in gen.layer_names() if "." not in n] == [f"layer{i}" for i in range(1, 7)] + ["output_16x16"]


def test_resolution_and_layer_grid_are_read_off_the_keys(tmp_path):
    # 256 px: 14 layers, layer4 at 8x8 (narrow channels keep the file small).
    net = tiny_progan(sizes=(8,) * 7 + (4,))
    path = write_progan(net, tmp_path / "g256.pth")
    gen = gdx.load_generator("progan", weights=str(path))
    assert gen.module.resolution == 256
    assert "layer14" in gen.layer_names() and "layer15" not in gen.layer_names()
    with torch.no_grad(), gdx.Trace(gen.module, ["layer4"]) as tr:
        img = gen.generate(gen.sample_latents(1, seed=0))
    assert tr["layer4"].shape[-2:] == (8, 8) and img.shape == (1, 3, 256, 256)


def test_missing_truncated_and_wrong_architecture_files_say_what_to_do(tmp_path):
    with pytest.raises(gdx.CheckpointError, match="not found"):
        gdx.load_generator("progan", weights=str(tmp_path / "nope.pth"))
    path = write_progan(tiny_progan(), tmp_path / "g.pth")
    data = path.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(gdx.CheckpointError, match="truncated"):
        gdx.load_generator("progan", weights=str(tmp_path / "cut.pth"))
    torch.save(tiny_stylegan2().state_dict(), tmp_path / "sg2.pth")
    with pytest.raises(gdx.CheckpointError, match="StyleGAN2"):
        gdx.load_generator("progan", weights=str(tmp_path / "sg2.pth"))
    with pytest.raises(gdx.CheckpointError, match="churchoutdoor"):
        gdx.load_generator("progan", weights="cathedral")


def test_a_known_name_is_read_from_the_cache_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("GDX_CACHE", str(tmp_path))
    net = tiny_progan(seed=2)
    (tmp_path / "weights").mkdir()
    write_progan(net, tmp_path / "weights" / "churchoutdoor_lsun.pth")
    # A base URL nobody listens on: any download attempt would fail the build.
    gen = gdx.load_generator("progan", weights="churchoutdoor", base_url="http://127.0.0.1:9/")
    z = gen.sample_latents(2, seed=0)
    with torch.no_grad():
        assert torch.equal(gen.generate(z), net(z))


@pytest.fixture
def mirror(tmp_path):
    """A local HTTP server standing in for a weights mirror."""
    root = tmp_path / "mirror"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_a_known_name_downloads_from_a_mirror_with_checksum(tmp_path, monkeypatch, mirror):
    root, url = mirror
    cache = tmp_path / "cache"
    monkeypatch.setenv("GDX_CACHE", str(cache))
    net = tiny_progan(seed=3)
    served = write_progan(net, root / "bedroom_lsun.pth")
    digest = hashlib.sha256(served.read_bytes()).hexdigest()
    gen = gdx.load_generator("progan", weights="bedroom", base_url=url, sha256=digest)
    assert (cache / "weights" / "bedroom_lsun.pth").read_bytes() == served.read_bytes()
    assert not [p for p in (cache / "weights").iterdir() if p.name.endswith(".part")]
    z = gen.sample_latents(2, seed=0)
    with torch.no_grad():
        assert torch.equal(gen.generate(z), net(z))


def test_the_mirror_can_be_set_by_environment(tmp_path, monkeypatch, mirror):
    root, url = mirror
    monkeypatch.setenv("GDX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("GDX_PROGAN_URL", url)
    write_progan(tiny_progan(), root / "kitchen_lsun.pth")
    gen = gdx.load_generator("progan", weights="kitchen")
    assert gen.sample_latents(1, seed=0).shape == (1, 16)


def test_a_checksum_mismatch_is_refused_and_nothing_is_cached(tmp_path, monkeypatch, mirror):
    root, url = mirror
    cache = tmp_path / "cache"
    monkeypatch.setenv("GDX_CACHE", str(cache))
    write_progan(tiny_progan(), root / "restaurant_lsun.pth")
    with pytest.raises(gdx.CheckpointError, match="SHA-256") as info:
        gdx.load_generator("progan", weights="restaurant", base_url=url, sha256="0" * 64)
    assert "restaurant_lsun.pth" in str(info.value)
    assert list((cache / "weights").iterdir()) == []


def test_a_dead_link_or_no_network_names_the_file_and_where_to_put_it(tmp_path, monkeypatch, mirror):
    _root, url = mirror
    cache = tmp_path / "cache"
    monkeypatch.setenv("GDX_CACHE", str(cache))
    with pytest.raises(gdx.CheckpointError, match="404") as info:  # mirror lacks the file
        gdx.load_generator("progan", weights="diningroom", base_url=url)
    message = str(info.value)
    assert "diningroom_lsun.pth" in message and str(cache / "weights" / "diningroom_lsun.pth") in message
    with pytest.raises(gdx.CheckpointError, match="offline or dead link"):
        gdx.load_generator("progan", weights="livingroom", base_url="http://127.0.0.1:9/")
    with pytest.raises(gdx.CheckpointError, match="not in the cache"):
        gdx.load_generator("progan", weights="conferenceroom", download=False)


def test_default_url_is_the_original_location():
    assert progan_mod.DEFAULT_BASE_URL == "http://gandissect.csail.mit.edu/models/"
    assert set(progan_mod.KNOWN_MODELS) == {
        "churchoutdoor", "bedroom", "kitchen", "conferenceroom", "diningroom", "livingroom", "restaurant"}


def test_options_parse_from_the_command_line():
    info = gdx.default_registry().info("generator", "progan")
    from gdx.manager import parse_options

    opts = parse_options(info, ["weights=x.pth", "download=false", "device=cpu"])
    assert opts == {"weights": "x.pth", "download": False, "device": "cpu"}
    assert isinstance(Path(opts["weights"]), Path)


def test_a_file_name_is_a_path_and_never_downloaded(tmp_path, monkeypatch):
    """`weights=churchoutdoor_lsun.pth` in the current folder is that file; if absent, no download is tried."""
    monkeypatch.setenv("GDX_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    net = tiny_progan(seed=4)
    write_progan(net, tmp_path / "churchoutdoor_lsun.pth")
    gen = gdx.load_generator("progan", weights="churchoutdoor_lsun.pth", base_url="http://127.0.0.1:9/")
    z = gen.sample_latents(2, seed=0)
    with torch.no_grad():
        assert torch.equal(gen.generate(z), net(z))
    with pytest.raises(gdx.CheckpointError, match="never downloaded") as info:
        gdx.load_generator("progan", weights="bedroom_lsun.pth", base_url="http://127.0.0.1:9/")
    assert "weights=bedroom" in str(info.value) and "gdx weights" in str(info.value)
    with pytest.raises(gdx.CheckpointError, match="sha256"):
        gdx.load_generator("progan", weights="churchoutdoor_lsun.pth", sha256="0" * 64)
    # a bare file name that is not here is found in the cache, still without a download
    (tmp_path / "cache" / "weights").mkdir(parents=True)
    (tmp_path / "churchoutdoor_lsun.pth").rename(tmp_path / "cache" / "weights" / "churchoutdoor_lsun.pth")
    gen = gdx.load_generator("progan", weights="churchoutdoor_lsun.pth", base_url="http://127.0.0.1:9/")
    with torch.no_grad():
        assert torch.equal(gen.generate(z), net(z))
