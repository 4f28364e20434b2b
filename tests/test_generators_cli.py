"""Acceptance: ``gdx run --gen {progan,stylegan2,vae} --seg upernet ... --samples 20`` on the CPU."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from gdx.cli import cli
from gen_formats import tiny_progan, tiny_stylegan2, write_nvidia_pkl, write_progan
from seg_formats import smp_directory


@pytest.fixture(scope="module")
def upernet_dir(tmp_path_factory):
    folder, _model = smp_directory(tmp_path_factory.mktemp("seg") / "upernet", decoder_channels=32)
    return folder


def _progan(tmp_path):
    # A 256-px gandissect-format file (14 layers; narrow channels keep it small).
    path = write_progan(tiny_progan(sizes=(16,) * 5 + (8, 8, 8)), tmp_path / "churchoutdoor_lsun.pth")
    return ["--gen", "progan", "--gen-opt", f"weights={path}", "--layer", "layer4"]


def _stylegan2(tmp_path):
    path = write_nvidia_pkl(tiny_stylegan2(resolution=64), tmp_path / "network-snapshot.pkl")
    return ["--gen", "stylegan2", "--gen-opt", f"weights={path}", "--gen-opt", "truncation=0.7",
            "--layer", "synthesis.b16.conv1"]


def _vae(tmp_path):
    pytest.importorskip("diffusers")
    from gen_formats import tiny_autoencoder_kl

    tiny_autoencoder_kl().save_pretrained(tmp_path / "vae")
    return ["--gen", "vae", "--gen-opt", f"weights={tmp_path / 'vae'}", "--gen-opt", "resolution=64",
            "--layer", "decoder.up_blocks.0"]


@pytest.mark.slow
@pytest.mark.parametrize("gen_args", [_progan, _stylegan2, _vae], ids=["progan", "stylegan2", "vae"])
def test_gdx_run_end_to_end_with_upernet(tmp_path, upernet_dir, gen_args):
    args = gen_args(tmp_path)
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, [
        "run", *args, "--seg", "upernet", "--seg-opt", f"weights={upernet_dir}",
        "--samples", "20", "--batch-size", "10", "--quiet", "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    layer = args[args.index("--layer") + 1]
    assert layer in result.output and "wrote" in result.output
    assert any(out.iterdir())
