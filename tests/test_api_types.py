"""The typed public API: gdx.Value, the overloads of intervene and dissect, the facade."""

from __future__ import annotations

import importlib
import inspect
import types
import typing

import pytest
import torch
from torch import nn

import gdx
from gdx.errors import InterventionError
from gdx.intervention import Edit, Value, intervene
from gdx.values import unit_quantiles


class Identity4(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.feat = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feat(x)


# -- Value -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, q",
    [("q99", 0.99), ("q999", 0.999), ("q50", 0.5), ("q100", 1.0), ("q5", 0.05), ("q05", 0.05), ("q0", 0.0),
     ("q9999", 0.9999)],
)
def test_quantile_strings_are_percentiles(text: str, q: float) -> None:
    assert Value.parse(text) == Value.quantile(q)
    assert Value.parse(text).number == q


def test_q100_is_the_maximum_not_a_tenth() -> None:  # regression: "q100" used to parse to 0.1
    assert Value.parse("q100").number == 1.0
    assert Value.parse("q999").number == 0.999


@pytest.mark.parametrize("bad", ["q", "q1000", "qx", "q-5", "q99.5", "Q99", "bogus", "", True, None, (1, 2), ("insert",)])
def test_unparseable_values_list_the_accepted_forms(bad: object) -> None:
    with pytest.raises(InterventionError, match="unknown value") as err:
        Value.parse(bad)  # type: ignore[arg-type]  # deliberately bad input
    message = str(err.value)
    assert repr(bad) in message
    for form in ("number", "tensor", "'q99'", "('insert', concept)", "Value.quantile"):
        assert form in message


@pytest.mark.parametrize("q", [-0.1, 1.5, 99, float("nan")])
def test_quantile_out_of_range_names_value_and_fix(q: float) -> None:
    with pytest.raises(InterventionError, match="between 0 and 1") as err:
        Value.quantile(q)
    assert repr(q) in str(err.value) and "Value.quantile(0.99)" in str(err.value)


def test_parse_reads_every_old_form() -> None:
    assert Value.parse(0) == Value.constant(0.0)
    assert Value.parse(2.5).kind == "constant" and Value.parse(2.5).number == 2.5
    listed = Value.parse([1.0, 2.0])
    assert listed.kind == "per_unit" and listed.tensor is not None
    assert torch.equal(listed.tensor, torch.tensor([1.0, 2.0]))
    t = torch.arange(3.0)
    assert Value.parse(t).kind == "per_unit" and Value.parse(t).tensor is t
    assert Value.parse(("insert", "tree")) == Value.insertion("tree")
    assert Value.parse(("insert", 3)).concept == 3
    v = Value.quantile(0.9)
    assert Value.parse(v) is v


def test_value_is_frozen_and_hashable() -> None:
    v = Value.constant(1.0)
    with pytest.raises(AttributeError):
        v.number = 2.0  # type: ignore[misc]  # frozen on purpose
    assert {Value.quantile(0.99), Value.parse("q99")} == {Value.quantile(0.99)}
    assert Value.per_unit([1.0]) == Value.per_unit(torch.tensor([1.0]))
    assert Value.per_unit([1.0]) != Value.per_unit([2.0])
    assert repr(Value.quantile(0.99)) == "Value.quantile(0.99)"


def test_edit_stores_a_parsed_value_and_fails_early() -> None:
    assert Edit("feat", [0], "q99").value == Value.quantile(0.99)
    assert Edit("feat").value == Value.constant(0.0)
    with pytest.raises(InterventionError, match="unknown value"):
        Edit("feat", [0], "q1000")


def test_intervene_takes_values_and_old_forms_alike() -> None:
    net = Identity4()
    x = torch.randn(2, 5, 3, 3)
    full = torch.arange(5.0) * 10
    pairs = [
        (7.0, Value.constant(7.0)),
        ([1.0, 2.0], Value.per_unit([1.0, 2.0])),
        (full, Value.per_unit(full)),
        ("q99", Value.quantile(0.99)),
        (("insert", "tree"), Value.insertion("tree")),
    ]
    for old, new in pairs:
        with intervene(net, "feat", [1, 3], value=old, stats=full):
            a = net(x)
        with intervene(net, "feat", [1, 3], value=new, stats=full):
            b = net(x)
        with intervene(net, [Edit("feat", [1, 3], new)], stats=full):
            c = net(x)
        assert torch.equal(a, b) and torch.equal(a, c), old


def test_q100_intervention_uses_each_units_maximum(toy_pair: tuple[gdx.Generator, gdx.Segmenter]) -> None:
    gen, _seg = toy_pair
    z = gen.sample_latents(2, seed=0)
    with intervene(gen, "features", [0], value="q100", samples=8, seed=1) as iv:
        gen.generate(z)
    top = unit_quantiles(gen, "features", 1.0, samples=8, seed=1)
    assert torch.equal(iv.values[0], top)


# -- overloads -----------------------------------------------------------------------


get_overloads = getattr(typing, "get_overloads", None)


@pytest.mark.skipif(get_overloads is None, reason="typing.get_overloads needs Python 3.11")
def test_intervene_and_dissect_have_two_overloads() -> None:
    assert get_overloads is not None
    layer_kinds = [inspect.signature(f).parameters["layer"].annotation for f in get_overloads(gdx.intervene)]
    assert layer_kinds == ["str", "Sequence[Edit]"]
    returns = [inspect.signature(f).return_annotation for f in get_overloads(gdx.dissect)]
    assert returns == ["Dissection", "list[Dissection]"]


def test_loaders_are_typed() -> None:
    assert typing.get_type_hints(gdx.load_generator)["return"] is gdx.Generator
    assert typing.get_type_hints(gdx.load_segmenter)["return"] is gdx.Segmenter
    assert typing.get_type_hints(gdx.load_generator)["options"] is typing.Any


# -- facade ----------------------------------------------------------------------------


def test_all_is_sorted_unique_and_resolves() -> None:
    names = list(gdx.__all__)
    assert names == sorted(names)
    assert len(names) == len(set(names))
    missing = [n for n in names if not hasattr(gdx, n)]
    assert not missing
    assert "Value" in names and gdx.Value is Value
    assert gdx.__doc__ and "gdx.dissect" in gdx.__doc__


def test_module_names_and_function_names_do_not_collide() -> None:
    for module_name, function_name in (("gdx.dissection", "dissect"), ("gdx.intervention", "intervene")):
        module = importlib.import_module(module_name)
        assert isinstance(module, types.ModuleType)
        assert isinstance(getattr(gdx, function_name), types.FunctionType)
        assert getattr(gdx, function_name) is getattr(module, function_name)
