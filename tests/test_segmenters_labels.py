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


def test_ade20k_categories_follow_the_benchmarks_stuff_split():
    """Sky, grass, road... are stuff and tree, door, car... objects: the counts per category of an
    ADE20K dissection say something (before, all 150 labels were "object")."""
    from gdx.plugins.segmenters.labels import ADE20K_CATEGORY_SOURCE, ade20k_labels

    ade = ade20k_labels()
    counts = {c: list(ade.categories.values()).count(c) for c in set(ade.categories.values())}
    assert counts == {"stuff": 35, "object": 115}
    assert all(ade.categories[n] == "stuff" for n in ("wall", "sky", "floor", "grass", "road", "water", "mountain"))
    assert all(ade.categories[n] == "object" for n in ("tree", "door", "car", "person", "windowpane", "bed"))
    assert "object150_info.csv" in ADE20K_CATEGORY_SOURCE


def test_ade20k_dissection_summary_uses_both_categories():
    """A dissection labelled with the ADE20K label set counts interpretable units in >= 2 categories."""
    import torch

    import gdx
    from gdx.plugins.segmenters.labels import ade20k_labels
    from gdx.plugins.toy_world import TOY_LABELS

    ade = ade20k_labels()
    # the toy world's exact labels, renamed to ADE20K classes (sun -> sky is stuff; tree, rock are objects)
    to_ade = torch.tensor([ade.labels.index(n) for n in ("sky", "tree", "rock", "lake")])
    toy = gdx.load_segmenter("toy")

    def segment(x: torch.Tensor) -> torch.Tensor:
        out = toy.segment(x)
        return torch.where(out >= 0, to_ade[out.clamp(min=0)], out)

    assert list(TOY_LABELS) == ["sun", "tree", "rock", "lake"]
    seg = gdx.wrap_segmenter(segment, labels=ade.labels, categories=ade.categories, name="toy-as-ade20k")
    d = gdx.dissect(gdx.load_generator("toy"), seg, "features", samples=40, seed=0, progress=False)
    per_category = d.summary().per_category
    assert len([c for c, n in per_category.items() if n > 0]) >= 2, per_category
    assert set(per_category) <= {"stuff", "object"}


def test_csv_labels_file_with_a_stuff_column_gives_categories(tmp_path):
    (tmp_path / "l.csv").write_text("Idx,Stuff,Name\n1,1,sky\n2,0,car;auto\n")
    assert read_labels_file(tmp_path / "l.csv").categories == {"sky": "stuff", "car": "object"}
