"""Plugins: `archbench.register`, installed packages (entry points) and `--plugin FILE.py`."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import archbench
from archbench.archs import plugins, registry
from archbench.cli.list_cmd import list_rows
from archbench.cli.main import main
from archbench.matrix import results

LINEN = """
import flax.linen as nn
import jax.numpy as jnp

import archbench


class Tiny(nn.Module):
    width: int
    num_classes: int = 10
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(self.width, dtype=self.dtype, param_dtype=self.param_dtype)(x))
        return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype)(x)


def register(name, **kw):
    kw.setdefault("input", archbench.InputSpec("image", (8, 8, 1)))
    kw.setdefault("sizes", {"tiny": {"width": 4}, "small": {"width": 8}})
    archbench.register(name, Tiny, **kw)
"""
RUN = ["--size", "tiny", "--batch", "4", "--target-s", "0.1"]


@pytest.fixture(autouse=True)
def own_registry(isolated_registry):
    """Whatever a test registers or loads is gone afterwards (tests/conftest.py)."""


def write(path, body: str):
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return str(path)


def plugin_file(tmp_path, body: str, name: str = "my_model.py") -> str:
    return write(tmp_path / name, LINEN + textwrap.dedent(body))


def listed(capsys, *argv) -> dict:
    assert main(["list", "--json", *argv]) == 0
    return {(r["arch"], r["size"]): r for r in json.loads(capsys.readouterr().out)}


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("archbench"), err
    assert "Traceback" not in err
    return err


def ok_cells(path) -> dict:
    return {
        r["extra_info"]["cell_id"]: r["extra_info"]["status"]
        for r in results.load_results(path)["benchmarks"]
    }


def test_installed_package_is_found_by_list_and_run(tmp_path, monkeypatch, capsys):
    site = tmp_path / "site"
    (site / "abplug").mkdir(parents=True)
    write(site / "abplug" / "__init__.py", LINEN + "register('ep_mod')\n")
    write(site / "abplug" / "late.py", "from abplug import register\n\n\n"
          "def setup():\n    register('ep_call')\n")  # fmt: skip
    meta = site / "abplug-0.1.dist-info"
    meta.mkdir()
    write(meta / "METADATA", "Metadata-Version: 2.1\nName: abplug\nVersion: 0.1\n")
    write(
        meta / "entry_points.txt",
        """\
        [archbench.archs]
        mod = abplug
        call = abplug.late:setup
        """,
    )
    monkeypatch.syspath_prepend(str(site))
    # as on a fresh start: installed plugins load before the registry's first query
    registry.before_first_query(plugins.load_entry_points)
    rows = listed(capsys, "[em][pl]*")  # the plugins and mlp, not every size of the zoo
    assert {("ep_mod", "tiny"), ("ep_call", "small"), ("mlp", "tiny")} <= set(rows)
    assert rows[("ep_mod", "tiny")]["plugin"] == "'mod' (abplug)"
    assert rows[("mlp", "tiny")]["plugin"] is None and rows[("mlp", "tiny")]["family"] == "MLP"
    assert rows[("ep_call", "tiny")]["plugin"] == "'call' (abplug.late:setup)"
    out = tmp_path / "r.json"
    assert main(["run", "--arch", "ep_mod", "--mode", "infer", *RUN, "--out", str(out)]) == 0
    assert ok_cells(out) == {"ep_mod-tiny-infer-b4-float32-d1": "ok"}


def test_broken_installed_plugins_warn_once_and_builtins_work(tmp_path, monkeypatch, capsys):
    site = tmp_path / "site"
    (site / "badplug").mkdir(parents=True)
    write(site / "badplug" / "__init__.py", LINEN)
    write(site / "badplug" / "dup.py", "from badplug import register\nregister('mlp')\n")
    meta = site / "badplug-0.1.dist-info"
    meta.mkdir()
    write(meta / "METADATA", "Metadata-Version: 2.1\nName: badplug\nVersion: 0.1\n")
    write(
        meta / "entry_points.txt",
        "[archbench.archs]\nbroken = badplug.missing\ndup = badplug.dup\n",
    )
    monkeypatch.syspath_prepend(str(site))
    registry.before_first_query(plugins.load_entry_points)
    assert "mlp" in archbench.list_archs()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2, err
    assert "'broken' (badplug.missing)" in err[0] and "ModuleNotFoundError" in err[0]
    assert "'dup' (badplug.dup)" in err[1] and "'mlp': already registered" in err[1]
    assert all(line.startswith("archbench: warning: plugin") for line in err)
    assert archbench.get("mlp").family == "MLP"
    archbench.list_archs()
    assert capsys.readouterr().err == ""  # warned once


def test_plugin_file_on_list_run_and_train(tmp_path, capsys):
    path = plugin_file(
        tmp_path,
        """
        register("mine", input=archbench.InputSpec("sequence", (40, 1)))

        from archbench.train import recipes
        from archbench.train.recipe_spec import Constant, Optimizer, Recipe

        recipes.RECIPES["mine-synthetic"] = Recipe(
            name="mine-synthetic", arch="mine", size="tiny", dataset="mnist1d",
            optimizer=Optimizer("adam"), schedule=Constant(1e-3), epochs=1, batch=32,
            expected=(0.0, 1.0), source="a test",
        )
        """,
    )
    rows = listed(capsys, "--plugin", path, "--plugin", path, "mi*")  # twice: loaded once
    assert rows[("mine", "tiny")]["params"] == 40 * 4 + 4 + 4 * 10 + 10
    assert rows[("mine", "tiny")]["plugin"] == repr(path)
    out = tmp_path / "r.json"
    argv = ["run", "--plugin", path, "--arch", "mine", "--mode", "train", *RUN]
    assert main([*argv, "--out", str(out)]) == 0
    assert ok_cells(out) == {"mine-tiny-train-b4-float32-d1": "ok"}
    assert main(["train", "--plugin", path, "--list", "--json"]) == 0
    recipe = {r["recipe"]: r for r in json.loads(capsys.readouterr().out)}["mine-synthetic"]
    assert recipe["arch"] == "mine/tiny"  # registered: not "(missing)"


def test_matrix_suite_takes_plugin_option(tmp_path):
    import pytest as pt

    from archbench.matrix import session

    path = plugin_file(tmp_path, "register('direct')\n")
    out = tmp_path / "r.json"
    suite = session.__file__.replace("session.py", "test_matrix.py")
    argv = [suite, "-q", "-o", "addopts=", "-p", "no:cacheprovider", "-p", "no:xdist"]
    argv += ["--benchmark-enable", "--plugin", path, "--arch", "direct", "--size", "tiny"]
    argv += ["--mode", "infer", "--batch", "4", "--target-s", "0.1", "--archbench-out", str(out)]
    assert pt.main(argv) == 0
    assert ok_cells(out) == {"direct-tiny-infer-b4-float32-d1": "ok"}


BAD = {
    "missing file": (None, "no such file"),
    "syntax": ("def (:\n", "SyntaxError"),
    "import": ("import not_a_module_anywhere\n", "ModuleNotFoundError"),
    "duplicate": ("register('mlp')\n", "'mlp': already registered (by the built-in family MLP)"),
    "input rank": (
        "register('bad', input=archbench.InputSpec('image', (8, 8)))\n",
        "input image needs shape (H, W, C)",
    ),
    "input kind": (
        "register('bad', input=archbench.InputSpec('pixels', (8, 8, 1)))\n",
        "ValueError: input kind 'pixels'",
    ),
    "task": ("register('bad', task='regress')\n", "unknown task 'regress'"),
    "task input": ("register('bad', task='lm')\n", "task lm takes tokens input, not image"),
    "no tiny": ("register('bad', sizes={'small': {'width': 8}})\n", "include 'tiny' and 'small'"),
    "bad config": (
        "register('bad', sizes={'tiny': {'depth': 4}, 'small': {'width': 8}})\n",
        "size 'tiny' TypeError",
    ),
    "no classes": (
        "class NoClasses(nn.Module):\n"
        "    width: int\n"
        "    dtype: jnp.dtype = jnp.float32\n"
        "    param_dtype: jnp.dtype = jnp.float32\n"
        "archbench.register('bad', NoClasses, input=archbench.InputSpec('image', (8, 8, 1)),"
        " sizes={'tiny': {'width': 4}, 'small': {'width': 8}})\n",
        "'bad': a classifier needs num_classes",
    ),
    "wrong output": (  # 'bad' fits; 'bad2', a classifier's logits for a language model, not
        "register('bad', input=archbench.InputSpec('sequence', (8, 3)))\n"
        "register('bad2', task='lm', input=archbench.InputSpec('tokens', (8,), vocab_size=50))\n",
        "'bad2': size 'tiny' gives (2, 10), a lm model must give float logits of shape (2, 8, 50)",
    ),
    "does not run": (
        "class Broken(Tiny):\n"
        "    def __call__(self, x, *, train=False):\n"
        "        return x.reshape(x.shape[0], 7, -1)\n"
        "archbench.register('bad', Broken, input=archbench.InputSpec('image', (8, 8, 1)),"
        " sizes={'tiny': {'width': 4}, 'small': {'width': 8}})\n",
        "'bad': size 'tiny' does not run on its input (image 8x8x1): TypeError",
    ),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_plugin_is_one_line_exit_2_and_builtins_still_work(case, tmp_path, capsys):
    body, expect = BAD[case]
    path = str(tmp_path / "nope.py") if body is None else plugin_file(tmp_path, body)
    command = {"syntax": "run", "task": "train"}.get(case, "list")
    assert main([command, "--plugin", path]) == 2
    err = one_line_error(capsys)
    assert f"plugin {path!r}: " in err and expect in err, err
    assert not archbench.list_archs("bad*")  # a plugin failing halfway takes all back
    assert main(["list", "mlp"]) == 0 and "mlp" in capsys.readouterr().out


def readme_file(name: str) -> str:
    """The code block README.md introduces as `name`."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    marker = f"<!-- doc-test: file={name} -->\n```python\n"
    assert marker in readme, name
    return readme.split(marker, 1)[1].split("```", 1)[0]


def test_readme_examples_register_linen_and_nnx(tmp_path, capsys):
    paths = [write(tmp_path / n, readme_file(n)) for n in ("my_model.py", "my_nnx_model.py")]
    rows = listed(capsys, "mine*", *(arg for p in paths for arg in ("--plugin", p)))
    assert set(rows) == {("mine", s) for s in ("tiny", "small", "wide")} | {
        ("mine_nnx", "tiny"),
        ("mine_nnx", "small"),
    }
    for size in ("tiny", "small"):  # the same model twice
        assert rows[("mine", size)]["params"] == rows[("mine_nnx", size)]["params"]


def test_registering_starts_no_jax_backend(tmp_path):
    """A multi-process job loads --plugin before jax.distributed.initialize, which must come
    before any JAX backend starts: checking a spec traces shapes only."""
    path = plugin_file(tmp_path, "register('mine')\n")
    code = (
        "import sys; from jax._src import xla_bridge as xb; from archbench.archs import plugins;"
        "from archbench.checks.nnx import register_twin;"
        f"plugins.load_file({path!r}); register_twin();"
        "sys.exit(xb.backends_are_initialized())"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


def test_bad_module_name_is_one_line(capsys):
    assert main(["list", "--plugin", "no_such_plugin_module"]) == 2
    assert "plugin 'no_such_plugin_module': ModuleNotFoundError" in one_line_error(capsys)


def test_register_forms():
    import flax.linen as nn
    import jax.numpy as jnp

    class tiny(nn.Module):
        width: int
        num_classes: int = 10
        dtype: jnp.dtype = jnp.float32
        param_dtype: jnp.dtype = jnp.float32

        @nn.compact
        def __call__(self, x, *, train: bool = False):
            x = nn.Dense(self.width, dtype=self.dtype, param_dtype=self.param_dtype)(
                x.reshape(x.shape[0], -1)
            )
            return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype)(x)

    @archbench.register("decorated", sizes={"tiny": {"width": 2}, "small": {"width": 3}},
                        input=archbench.InputSpec("image", (4, 4, 1)))  # fmt: skip
    class Decorated(tiny):
        pass

    assert archbench.get("decorated").module is Decorated
    assert archbench.param_count("decorated", "tiny") == 16 * 2 + 2 + 2 * 10 + 10

    def factory(width, dtype, param_dtype) -> nn.Module:  # a factory of Linen modules
        return tiny(width, num_classes=3, dtype=dtype, param_dtype=param_dtype)

    spec = archbench.register(
        "made",
        factory,
        sizes={
            "tiny": archbench.Size({"width": 2}, archbench.InputSpec("sequence", (5, 2))),
            "small": archbench.Size({"width": 3}, archbench.InputSpec("sequence", (5, 2))),
        },
    )
    assert spec.num_outputs("tiny") == 3 and archbench.list_archs("made") == ["made"]
    assert [r["params"] for r in list_rows("made")] == [10 * 2 + 2 + 2 * 3 + 3, 10 * 3 + 3 + 12]
    with pytest.raises(archbench.UserError, match="'made': already registered"):
        archbench.register("made", factory, sizes=spec.sizes)
    with pytest.raises(archbench.UserError, match="bare config: pass input"):
        archbench.register("other", factory, sizes={"tiny": {}, "small": {}})
    with pytest.raises(archbench.UserError, match="architecture name 'a-b'"):
        archbench.register("a-b", factory, sizes=spec.sizes)
