"""pytest, run on bench/ of a checkout (`pytest --benchmark-only bench/ --arch mlp ...`).

The matrix's options and hooks live in bench/matrix/conftest.py, which pytest reads only
when it parses the command line for a path inside bench/matrix/; for `pytest bench/` it
would read it too late, and refuse `--arch` as unknown. So it is registered here, under the
name pytest gives that file, which pytest then finds already loaded.
"""

from pathlib import Path


def pytest_addoption(parser, pluginmanager):
    name = str(Path(__file__).with_name("matrix") / "conftest.py")
    if pluginmanager.get_plugin(name) is None:
        from archbench.matrix import conftest  # its own options are added as it registers

        pluginmanager.register(conftest, name)
