"""Shared test fixtures."""
import os
import pathlib

import pytest

# XLA:CPU compiles for the whole suite at LLVM's -O0 and with its older loop emitters instead of
# the MLIR fusion emitters (runs outside it, experiments/ and benchmarks/, keep XLA's defaults):
# at the suite's sizes the time is in compiling, not running. FashionGAN's `:test` run compiled
# its 14 programs in 23.6 s at -O0 instead of 41 s (80 -> 62 s in all; 2-core AMD EPYC, empty
# caches), and the suite took 28.6 instead of 37 min there; without the fusion emitters the same
# 14 compiled in 10.6-12.8 s instead of 17.1-18.6 s (user time 35-38 s instead of 42-45 s).
# Results agree with the default build to float32 rounding (FashionGAN's losses: to 1 ulp at
# -O0; without the fusion emitters 8 of its 85 logged values differ, by at most 1 ulp).
# Subprocesses inherit them; tests that set XLA_FLAGS for one add to this value.
TEST_XLA_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")
_missing = [f for f in TEST_XLA_FLAGS if f not in os.environ.get("XLA_FLAGS", "").split()]
if _missing:
  os.environ["XLA_FLAGS"] = " ".join([*_missing, os.environ.get("XLA_FLAGS", "")]).strip()

# Under pytest-xdist (scripts/test.sh runs two workers) each worker builds data sets and
# compiles into its own cache folder, so two builds of one data set never race.
if os.environ.get("PYTEST_XDIST_WORKER"):
  _root = os.environ.get("READINGNOTES_CACHE",
                         os.path.join(os.path.expanduser("~"), ".cache", "readingnotes_jax"))
  os.environ["READINGNOTES_CACHE"] = os.path.join(_root, os.environ["PYTEST_XDIST_WORKER"])


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
  """The real data folder (../shared/data) named by READINGNOTES_DATA, or skip."""
  path = os.environ.get("READINGNOTES_DATA")
  if not path or not pathlib.Path(path).is_dir():
    pytest.skip("real data not found: set READINGNOTES_DATA=../shared/data")
  return pathlib.Path(path).resolve()


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups.
def pytest_collection_modifyitems(items):
  """With `--dist loadgroup`, a test file's tests share a worker (and its module fixtures)
  unless they name a group of their own (the contract suite groups by config)."""
  for item in items:
    if not item.get_closest_marker("xdist_group"):
      item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
  """Refuses a pytest / pytest-xdist pair whose `--dist loadgroup` does not group: xdist marks
  a grouped test by appending "@group" to its id, which pytest 9.2 ignores; the tests would
  then run anywhere and every worker would rebuild the module fixtures (twice the time)."""
  if node.config.getvalue("dist") == "loadgroup" and ids and not any("@" in i for i in ids):
    pytest.exit(f"pytest {pytest.__version__} with this pytest-xdist ignores --dist loadgroup's "
                "groups: install the versions in requirements-test.txt",
                returncode=pytest.ExitCode.USAGE_ERROR)
