"""Plugin loading: built-ins, embedding with an own registry, entry points, bad hooks."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pluggy
import pytest
import torch

import gdx
from gdx import hookspecs

ROOT = Path(__file__).resolve().parents[1]
from gdx.errors import DuplicateAdapterError
from gdx.manager import PluginRegistry

HERE = Path(__file__).parent


def make_plugin(_name="test_plugin", **hooks):
    mod = types.ModuleType(_name)
    for name, fn in hooks.items():
        setattr(mod, name, gdx.hookimpl(fn))
    return mod


def test_builtins_are_registered_through_the_hooks():
    reg = PluginRegistry(load_entrypoints=False)
    assert "toy" in reg.infos("generator") and "toy" in reg.infos("segmenter")
    assert {"iou", "iqr"} <= set(reg.infos("metric"))
    assert all(i.plugin.startswith("gdx.plugins.") for i in reg.infos("metric").values())


def test_embedding_registry_has_its_own_plugins_and_no_global_state():
    calls = []

    def register_generators(register):
        def build(scale: float = 1.0):
            """A constant generator."""
            calls.append(scale)
            return gdx.wrap_generator(torch.nn.Identity(), latent_shape=(3, 2, 2), name="const")

        register("const", build)

    reg = PluginRegistry([make_plugin(register_generators=register_generators)], load_entrypoints=False)
    gen = reg.load_generator("const", scale=2.0)
    assert calls == [2.0] and gen.name == "const"
    assert "const" not in gdx.default_registry().infos("generator")
    assert reg.infos("generator")["const"].description == "A constant generator."


def test_misspelt_hook_fails_loudly():
    def register_generator(register):  # missing the "s"
        pass

    with pytest.raises(pluggy.PluginValidationError, match="register_generator"):
        PluginRegistry([make_plugin(register_generator=register_generator)], load_entrypoints=False)


def _registers_generator(name):
    def register_generators(register):
        register(name, lambda: gdx.wrap_generator(torch.nn.Identity(), latent_shape=(3, 2, 2), name=name))

    return register_generators


def test_duplicate_adapter_name_names_both_plugins():
    a = make_plugin("plugin_a", register_generators=_registers_generator("twin"))
    b = make_plugin("plugin_b", register_generators=_registers_generator("twin"))
    reg = PluginRegistry(plugins=[a, b], load_entrypoints=False)
    with pytest.raises(DuplicateAdapterError) as info:
        reg.infos("generator")
    text = str(info.value)
    assert "generator 'twin'" in text and "'plugin_a'" in text and "'plugin_b'" in text
    assert (info.value.kind, info.value.name) == ("generator", "twin")
    assert isinstance(info.value, gdx.GdxError)
    with pytest.raises(DuplicateAdapterError):  # not cached as a half-built registry
        reg.load_generator("twin")


def test_duplicate_of_a_builtin_and_of_unnamed_plugin_objects():
    reg = PluginRegistry([make_plugin("mytoy", register_generators=_registers_generator("toy"))],
                         load_entrypoints=False)
    with pytest.raises(DuplicateAdapterError, match=r"generator 'toy'.*'gdx\.plugins\.generators\.toy'.*'mytoy'"):
        reg.infos("generator")

    class SegPlugin:
        @gdx.hookimpl
        def register_segmenters(self, register):
            register("same", lambda: None)

    with pytest.raises(DuplicateAdapterError, match=r"segmenter 'same'.*SegPlugin object.*SegPlugin object"):
        PluginRegistry([SegPlugin(), SegPlugin()], builtins=False, load_entrypoints=False).infos("segmenter")


def test_missing_and_malformed_options_speak_of_options_not_flags():
    from gdx.manager import parse_options

    def register_generators(register):
        def build(weights: str, labels: str, scale: float = 1.0):
            """Needs weights and labels."""
            return gdx.wrap_generator(torch.nn.Identity(), latent_shape=(3, 2, 2), name="needy")

        register("needy", build)

    reg = PluginRegistry([make_plugin(register_generators=register_generators)], load_entrypoints=False)
    with pytest.raises(gdx.AdapterOptionError) as info:
        reg.load_generator("needy", labels="l.json")
    assert str(info.value).endswith("needs the generator option(s) `weights=...`")
    with pytest.raises(gdx.AdapterOptionError) as info:
        reg.load_generator("needy")
    assert "needs the generator option(s) `weights=...` and the generator option `labels=...`" in str(info.value)
    assert "--" not in str(info.value)
    with pytest.raises(gdx.AdapterOptionError, match="not key=value.*the generator option `weights=model.pth`"):
        parse_options(reg.info("generator", "needy"), ["weights"])


def test_unknown_names_and_options_list_what_exists():
    with pytest.raises(gdx.UnknownAdapterError, match="Did you mean 'toy'.*Installed generators: .*toy"):
        gdx.load_generator("toi")
    with pytest.raises(gdx.AdapterOptionError, match="no option 'size'.*resolution=32"):
        gdx.load_generator("toy", size=3)


def _registered_hookspecs(pm):
    """Every hook the plugin manager knows a specification for (as datasette's test lists them)."""
    return sorted(name for name in dir(pm.hook) if not name.startswith("_")
                  and getattr(getattr(pm.hook, name), "spec", None) is not None)


def test_every_hook_is_documented_and_implemented():
    from gdx.cli.main import register_builtin_commands

    reg = gdx.PluginRegistry(load_entrypoints=False)
    register_builtin_commands(reg)
    names = _registered_hookspecs(reg.pm)
    assert len(names) >= 4, names
    docs = (ROOT / "docs" / "writing-an-adapter.md").read_text()
    for name in names:
        caller = getattr(reg.pm.hook, name)
        doc = caller.spec.function.__doc__ or ""
        assert len(doc) > 40, f"hookspec {name} needs a docstring that says what to register"
        assert f"`{name}`" in docs or f"{name}(" in docs, f"docs/writing-an-adapter.md does not document {name}"
        assert caller.get_hookimpls(), f"no built-in plugin implements {name}: it would be untested"


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    """pip-install the third-party test package into a throwaway target folder."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(HERE / "plugin_pkg")],
        check=True,
    )
    return target


def run_gdx(args, site, **env_extra):
    env = {k: v for k, v in os.environ.items() if k != "GDX_LOAD_PLUGINS"}
    env["PYTHONPATH"] = str(site) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(env_extra)
    return subprocess.run([sys.executable, "-m", "gdx.cli", *args], capture_output=True, text=True, env=env)


def test_third_party_package_is_listed_and_usable(installed_plugin, tmp_path):
    out = run_gdx(["generators"], installed_plugin)
    assert out.returncode == 0, out.stderr
    assert "tinygan" in out.stdout and "gdx-tinygan 0.0.1" in out.stdout
    out = run_gdx(["plugins"], installed_plugin)
    assert "tinygan" in out.stdout and "gdx-tinygan 0.0.1" in out.stdout
    out = run_gdx(["run", "--gen", "tinygan", "--seg", "toy", "--samples", "20", "--quiet",
                   "--out", str(tmp_path / "r")], installed_plugin)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "r" / "run.json").exists() and (tmp_path / "r" / "conv" / "dissection.json").exists()


@pytest.fixture
def tinygan_importable(installed_plugin, monkeypatch):
    """The installed test package on sys.path of this process, entry points enabled."""
    monkeypatch.syspath_prepend(str(installed_plugin))
    monkeypatch.delenv("GDX_LOAD_PLUGINS", raising=False)
    yield
    sys.modules.pop("gdx_tinygan", None)


def test_entry_point_plugin_reports_its_distribution(tinygan_importable):
    reg = PluginRegistry()
    assert reg.infos("generator")["tinygan"].plugin == "tinygan"
    packages = reg.plugin_packages()
    assert packages["tinygan"] == "gdx-tinygan 0.0.1"
    assert packages["gdx.plugins.generators.toy"] == "gdx (built-in)"
    assert set(packages) == set(reg.plugin_names())


def test_duplicate_of_an_entry_point_plugin_names_its_package(tinygan_importable):
    reg = PluginRegistry([make_plugin("mine", register_generators=_registers_generator("tinygan"))])
    with pytest.raises(DuplicateAdapterError) as info:
        reg.infos("generator")
    assert "'tinygan' (gdx-tinygan 0.0.1)" in str(info.value) and "'mine'" in str(info.value)


def test_gdx_load_plugins_restricts_entry_points(installed_plugin):
    out = run_gdx(["generators"], installed_plugin, GDX_LOAD_PLUGINS="")
    assert out.returncode == 0 and "tinygan" not in out.stdout
    out = run_gdx(["generators"], installed_plugin, GDX_LOAD_PLUGINS="gdx-tinygan")
    assert "tinygan" in out.stdout


def test_plugin_commands_are_added_to_the_cli():
    import click
    from click.testing import CliRunner

    from gdx.cli import GdxGroup

    def register_commands(cli):
        @cli.command()
        def hello():
            click.echo("hello from a plugin")

    reg = PluginRegistry([make_plugin(register_commands=register_commands)], load_entrypoints=False)
    group = GdxGroup(name="gdx")
    reg.pm.hook.register_commands(cli=group)
    assert CliRunner().invoke(group, ["hello"]).output.strip() == "hello from a plugin"
