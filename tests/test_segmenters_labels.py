"""Label lists shipped with the segmenters and user labels files."""

from __future__ import annotations

import json

import pytest

from gdx.errors import CheckpointError
from gdx.plugins.segmenters.labels import ade20k_labels, ade20k_palette, choose_labels, read_labels_file, voc_labels


def test_ade20k_labels_are_150_unique_in_model_order():
    ade = ade20k_labels()
    assert len(ade.labels) == 150 == len(set(ade.labels))
    assert ade.labels[:4] == ["wall", "building", "sky", "floor"]
    assert ade.labels[12] == "person" and ade.labels[149] == "flag"
    assert ade.labels[58] == "screen door" and ade.labels[130] == "projection screen"
    assert len(ade20k_palette()) == 150 and ade20k_palette()[0] == (120, 120, 120)


def test_voc_labels():
    assert voc_labels().labels[0] == "background" and len(voc_labels().labels) == 21


def test_labels_files(tmp_path):
    (tmp_path / "a.txt").write_text("sky\n\ntree\n")
    assert read_labels_file(tmp_path / "a.txt").labels == ["sky", "tree"]
    (tmp_path / "b.json").write_text(json.dumps({"labels": ["x", "y"], "categories": {"y": "part"}}))
    assert read_labels_file(tmp_path / "b.json").categories == {"y": "part"}
    (tmp_path / "c.csv").write_text("Idx,Name\n1,wall\n2,building;edifice\n")
    assert read_labels_file(tmp_path / "c.csv").labels == ["wall", "building"]
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_labels_file(tmp_path / "bad.json")
    (tmp_path / "cats.json").write_text(json.dumps({"labels": ["x"], "categories": {"z": "part"}}))
    with pytest.raises(CheckpointError, match="unknown labels"):
        read_labels_file(tmp_path / "cats.json")
    with pytest.raises(CheckpointError, match="not found"):
        read_labels_file(tmp_path / "none.txt")
    assert choose_labels(3, None, default=voc_labels(), what="w").labels == ["class0", "class1", "class2"]
    (tmp_path / "one.txt").write_text("q\n")
    with pytest.raises(CheckpointError, match="1 names but the model predicts 2"):
        choose_labels(2, str(tmp_path / "one.txt"), default=None, what="w")
