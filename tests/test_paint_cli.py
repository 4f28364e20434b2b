"""``gdx paint``: startup (cached quick dissection or --run), host warning; uvicorn is stubbed."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from gdx_browser import make_run

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from gdx.cli.paint import paint  # noqa: E402


@pytest.fixture
def served(monkeypatch):
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    return calls


def test_paint_with_run_and_exposed_host(tmp_path, served):
    run = make_run(tmp_path / "run", "toy", "toy", "features", samples=40)
    res = CliRunner().invoke(paint, ["--run", str(run), "--host", "0.0.0.0", "--port", "9123"])
    assert res.exit_code == 0, res.output
    assert "WARNING" in res.output and "0.0.0.0" in res.output
    app, kw = served[0]
    assert kw["host"] == "0.0.0.0" and kw["port"] == 9123
    assert "/api/edit" in app.openapi()["paths"]
    assert torch.is_grad_enabled(), "gdx paint must not switch autograd off for the process that embeds it"


def test_paint_default_host_is_local_and_dissection_is_cached(tmp_path, served, monkeypatch):
    monkeypatch.setenv("GDX_CACHE", str(tmp_path / "cache"))
    args = ["--gen", "toy", "--seg", "toy", "--samples", "40"]
    res = CliRunner().invoke(paint, args)
    assert res.exit_code == 0, res.output
    assert "WARNING" not in res.output and served[0][1]["host"] == "127.0.0.1"
    manifests = list((tmp_path / "cache" / "paint").glob("*/run.json"))
    assert len(manifests) == 1
    stamp = manifests[0].stat().st_mtime_ns
    res = CliRunner().invoke(paint, args)
    assert res.exit_code == 0 and "dissecting" not in res.output
    assert manifests[0].stat().st_mtime_ns == stamp


def test_paint_bad_layer_is_one_line(tmp_path, served):
    run = make_run(tmp_path / "run", "toy", "toy", "features", samples=40)
    res = CliRunner().invoke(paint, ["--run", str(run), "--layer", "nope"])
    assert res.exit_code == 1 and "features" in res.output and "Traceback" not in res.output
    assert not served
