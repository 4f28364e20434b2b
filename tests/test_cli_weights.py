"""`gdx weights`: the adapters' known checkpoints, the cache folder, and how to place a file."""

from __future__ import annotations

import re

from click.testing import CliRunner

from gdx.cli.main import BUILTIN_COMMAND_PLUGINS, cli
from gdx.plugins.generators import progan


def invoke(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def _rows(output: str) -> list[list[str]]:
    lines = output.splitlines()
    return [re.split(r"\s{2,}", line.strip()) for line in lines[2:lines.index("")]]


def test_weights_lists_each_adapters_files_and_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GDX_CACHE", str(tmp_path))
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "churchoutdoor_lsun.pth").write_bytes(b"placed by hand")
    assert "gdx.cli.weights" in BUILTIN_COMMAND_PLUGINS
    r = invoke("weights")
    assert r.exit_code == 0, r.output
    rows = {(row[0], row[1]): row for row in _rows(r.output)}
    assert {a for a, _ in rows} == {"progan", "stylegan2", "upernet", "deeplab"}
    assert rows[("progan", "churchoutdoor")][2] == "churchoutdoor_lsun.pth"
    assert rows[("progan", "churchoutdoor")][-1] == "in the cache"
    assert rows[("progan", "bedroom")][-1] == "not in the cache"
    for row in rows.values():  # a hash is a full SHA-256 or says it is unknown: never invented
        assert re.fullmatch(r"[0-9a-f]{64}", row[4]) or row[4].startswith("unknown"), row
    assert rows[("progan", "churchoutdoor")][3:5] == ["unknown", "unknown"]
    assert rows[("deeplab", "deeplabv3_resnet50")][4] == "unknown (starts cd0a2569)"
    assert rows[("upernet", "ade20k-resnet50-upernet")][-1] == "--seg-opt weights=PATH/ade20k-resnet50-upernet/"
    assert f"cache folder: {tmp_path / 'weights'}" in r.output
    assert "--gen-opt base_url=..." in r.output and "`base_url" not in r.output  # notes in CLI words
    assert "docs/adapters.md" in r.output and "sha256sum" in r.output


def test_weights_shows_a_recorded_hash_and_filters_by_adapter(tmp_path, monkeypatch):
    monkeypatch.setenv("GDX_CACHE", str(tmp_path))
    monkeypatch.setitem(progan.KNOWN_SHA256, "kitchen_lsun.pth", "ab" * 32)
    r = invoke("weights", "progan")
    rows = {row[1]: row for row in _rows(r.output)}
    assert set(rows) == set(progan.KNOWN_MODELS)
    assert rows["kitchen"][4] == "ab" * 32 and rows["bedroom"][4] == "unknown"
    bad = CliRunner().invoke(cli, ["weights", "nope"])
    assert bad.exit_code == 1 and "adapters with a list: progan, stylegan2, upernet, deeplab" in bad.output
    assert "Traceback" not in bad.output
