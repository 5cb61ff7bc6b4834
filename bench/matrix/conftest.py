"""pytest options and hooks of the benchmark matrix, test_matrix.py beside this file.

The selection options take comma lists, as `archbench run` does; without them the matrix is
the main job (archbench.matrix.cells). The logic lives in archbench.matrix.cells and
archbench.matrix.session; this file only wires it into pytest.
"""

from __future__ import annotations

import math

import pytest

from archbench.archs import plugins
from archbench.engine import aot, fields, measure, topology, xla_options
from archbench.errors import UserError
from archbench.matrix import cells, interop, results, session

PLUGIN = "archbench-matrix"


def pytest_addoption(parser):
    group = parser.getgroup("archbench", "archbench matrix (comma lists; default: the main job)")
    for field in fields.FIELDS:  # one option per cell field, as `archbench run` has
        group.addoption(field.option, dest=field.name, help=field.help)
    group.addoption(
        "--split", metavar="K/N", help="only the K-th of N disjoint shards of the selected cells"
    )
    group.addoption(
        "--target-s",
        type=float,
        default=session.DEFAULT_TARGET_S,
        help="seconds of timed rounds per cell (default: %(default)s)",
    )
    group.addoption(
        "--compile-only", action="store_true", help="compile each cell without running it"
    )
    group.addoption(
        "--device-memory", help="memory of one device (80GiB, or h100, v5e, ...): fits or not"
    )
    group.addoption(
        "--target-topology", help="compile for this TPU topology (v5e:2x2, ...): needs libtpu"
    )
    group.addoption(
        "--plugin",
        action="append",
        help="a .py file or module that registers architectures (archbench.register)",
    )
    group.addoption(  # not --profile: pytest-profiling has that one
        "--archbench-profile",
        metavar="DIR",
        help="a jax.profiler trace of a few steps of each cell, after its timed rounds: "
        "DIR/<cell_id>/",
    )
    group.addoption(
        "--dump-hlo", metavar="DIR", help="each cell's optimized HLO: DIR/<cell_id>.hlo.txt"
    )
    group.addoption("--archbench-out", help="results file, rewritten after every cell")
    group.addoption(
        "--archbench-resume", action="store_true", help="skip cells already ok in the file"
    )
    group.addoption(
        "--archbench-progress", action="store_true", help="progress bar on stderr (for the CLI)"
    )


def pytest_configure(config):
    if not 0 < config.getoption("target_s") < math.inf:
        raise pytest.UsageError("--target-s must be a positive number of seconds")
    memory = config.getoption("device_memory")
    name = config.getoption("target_topology")
    if config.getoption("archbench_profile") and config.getoption("compile_only"):
        raise pytest.UsageError("--profile traces steps that run; --compile-only runs none")
    try:
        plugins.load_files(config.getoption("plugin"))  # `archbench run` loaded them already
        requests = cells.select(
            **{name: config.getoption(name) for name in fields.NAMES},
            split=config.getoption("split"),
            target=topology.devices(name) if name else None,
        )
        plugin = session.MatrixSession(
            config,
            out=config.getoption("archbench_out"),
            resume=config.getoption("archbench_resume"),
            target_s=config.getoption("target_s"),
            progress=config.getoption("archbench_progress"),
            compile_only=config.getoption("compile_only"),
            device_memory=memory and aot.parse_memory(memory),
            target_topology=config.getoption("target_topology"),
            profile_dir=config.getoption("archbench_profile"),
            dump_hlo=config.getoption("dump_hlo"),
        )
    except UserError as e:
        raise pytest.UsageError(str(e)) from None
    plugin.requests = requests
    config.pluginmanager.register(plugin, PLUGIN)
    if not config.getoption("archbench_progress"):  # run by hand, not by `archbench run`
        filters = {name: config.getoption(name) for name in (*fields.NAMES, "split")}
        config.pluginmanager.register(interop.straight_run(config, filters, len(requests)))


def pytest_generate_tests(metafunc):
    if metafunc.definition.name != "test_cell":
        return
    requests = metafunc.config.pluginmanager.get_plugin(PLUGIN).requests
    metafunc.parametrize("cell", requests, ids=[c.id for c in requests])


@pytest.fixture
def matrix_session(request) -> session.MatrixSession:
    return request.config.pluginmanager.get_plugin(PLUGIN)


def pytest_benchmark_update_machine_info(config, machine_info):
    # backend, device kind and count, jax/jaxlib/flax/optax versions; a key pytest-benchmark
    # already fills (its "cpu" dict) keeps its value, archbench's goes in as archbench_<key>
    for key, value in measure.device_info().items():
        machine_info[f"archbench_{key}" if key in machine_info else key] = value
    machine_info.update(interop.machine_facts())  # environment, archbench version and commit
    # what each set of XLA options this process ran had in force (a resumed file keeps the
    # sets of the processes before it: MatrixSession._header)
    sets = fields.BY_NAME["xla_options"].values(config.getoption("xla_options"))
    machine_info["xla_options"] = {name: xla_options.environment(name) for name in sets}


def pytest_benchmark_update_json(config, benchmarks, output_json):
    # so --benchmark-json files load (a shard of a split matrix says so)
    output_json.setdefault(results.MARKER, results.marker(split=config.getoption("split")))
