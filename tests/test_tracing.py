"""Tracing: read/edit layers by name; no hook survives, even after an exception."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gdx
from gdx.tracing import count_hooks


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def test_trace_reads_layer_output():
    m = net()
    x = torch.randn(3, 4)
    with gdx.Trace(m, ["0", "1"]) as tr:
        m(x)
    assert torch.equal(tr["0"], m[0](x)) and torch.equal(tr["1"], torch.relu(m[0](x)))
    assert count_hooks(m) == 0


def test_edit_changes_downstream_and_stop_skips_rest():
    m = net()
    x = torch.randn(3, 4)
    with gdx.Trace(m, "1", edit=lambda name, out: out * 0):
        y = m(x)
    assert torch.allclose(y, m[2].bias.expand(3, 2))
    calls = []
    m[2].register_forward_hook(lambda *a: calls.append(1))
    with gdx.Trace(m, "0", stop=True) as tr:
        m(x)
    assert "0" in tr and not calls


def test_no_hook_survives_an_exception():
    m = net()
    before = count_hooks(m)

    def boom(name, out):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with gdx.Trace(m, ["0", "2"], edit=boom):
            m(torch.randn(1, 4))
    assert count_hooks(m) == before
    with pytest.raises(ValueError):
        with gdx.Trace(m, ["0"]):
            raise ValueError("user code failed")
    assert count_hooks(m) == before


def test_wrong_layer_lists_close_matches():
    m = nn.Sequential()
    m.add_module("layer4", nn.Identity())
    m.add_module("layer5", nn.Identity())
    with pytest.raises(gdx.UnknownLayerError, match="Close matches: layer4.*Valid layers: layer4, layer5"):
        gdx.Trace(m, "layr4")
