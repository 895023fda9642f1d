"""The notebooks in notebooks/ run end to end on the real data and draw their figures.

Each notebook is executed in memory with nbclient (the committed .ipynb, with
the outputs of a real run, is never rewritten) by a kernel on this
interpreter (the virtual environment's), with the notebooks folder as the
working directory, as Jupyter runs it. They need READINGNOTES_DATA (the
`data_dir` fixture skips without it).

After editing a notebook, save it with the outputs of a fresh run (no Jupyter needed):

  READINGNOTES_DATA=../shared/data .venv/bin/python tests/notebooks/test_notebooks.py [NAME ...]
"""
import hashlib
import json
import os
import pathlib
import sys
import time

import nbclient
import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[2] / "notebooks"
# Figures each notebook draws (outputs with an image/png).
FIGURES = {"detect_track.ipynb": 3, "fashiongan.ipynb": 3, "interpretable_cnn.ipynb": 4, "progan.ipynb": 3,
           "pspnet.ipynb": 2}
CELL_TIMEOUT_S = 600  # One cell; a whole notebook takes 1-2 min on a 2-core CPU.
KERNEL_NAME = "readingnotes-jax-tests"


def kernel_manager(kernel_root: pathlib.Path) -> KernelManager:
  """A manager for an IPython kernel on `sys.executable`, whatever kernels Jupyter has
  installed (a fresh clone has none registered; a user's `python3` may be another Python)."""
  spec = kernel_root / KERNEL_NAME
  spec.mkdir(parents=True, exist_ok=True)
  (spec / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "readingnotes_jax (tests)", "language": "python"}))
  specs = KernelSpecManager(kernel_dirs=[str(kernel_root)])
  # IPC sockets (files in kernel_root), not TCP ports on localhost.
  return KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=specs, transport="ipc",
                       connection_file=str(kernel_root / "connection.json"))


def execute(path: pathlib.Path, kernel_root: pathlib.Path,
            timeout: int = CELL_TIMEOUT_S) -> tuple[nbformat.NotebookNode, float]:
  """(the notebook at `path` with its new outputs, seconds); raises on a failing cell."""
  notebook = nbformat.read(path, as_version=4)
  km = kernel_manager(kernel_root)
  client = nbclient.NotebookClient(notebook, timeout=timeout, km=km,
                                   resources={"metadata": {"path": str(path.parent)}},
                                   record_timing=False)
  start = time.perf_counter()
  try:
    client.execute()
  finally:
    if km.has_kernel:  # nbclient leaves a kernel it did not start running
      km.shutdown_kernel(now=True)
  return notebook, time.perf_counter() - start


def outputs(notebook: nbformat.NotebookNode) -> list[dict]:
  return [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]


def png_count(notebook: nbformat.NotebookNode) -> int:
  return sum("image/png" in out.get("data", {}) for out in outputs(notebook))


def errors(notebook: nbformat.NotebookNode) -> list[str]:
  return [f"{out.get('ename')}: {out.get('evalue')}" for out in outputs(notebook)
          if out.get("output_type") == "error"]


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_committed_notebook_has_outputs(name):
  """Committed with the outputs of a real run (GitHub shows them): every code cell ran, in
  order, without an error, and the figures are there."""
  notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
  nbformat.validate(notebook)
  counts = [cell.execution_count for cell in notebook.cells if cell.cell_type == "code"]
  assert counts == list(range(1, len(counts) + 1)), f"{name}: rerun it top to bottom and save"
  assert not errors(notebook), errors(notebook)
  assert png_count(notebook) >= FIGURES[name]


# One xdist group per notebook (they share no fixture): under `pytest -n 2` the five runs
# (40-180 s each) spread over both workers instead of queuing on one.
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xdist_group(f"notebook {n}"))
                                  for n in sorted(FIGURES)])
def test_notebook_runs(name, data_dir, tmp_path, monkeypatch):
  """Runs top to bottom on the real data, draws its figures, leaves the file as it was."""
  monkeypatch.setenv("READINGNOTES_DATA", str(data_dir))
  path = NOTEBOOKS / name
  committed = hashlib.sha256(path.read_bytes()).hexdigest()
  notebook, seconds = execute(path, tmp_path / "kernels")
  print(f"{name}: executed in {seconds:.1f} s")
  assert not errors(notebook), errors(notebook)
  assert png_count(notebook) >= FIGURES[name], f"{name} drew {png_count(notebook)} figures"
  assert hashlib.sha256(path.read_bytes()).hexdigest() == committed, f"{name} was rewritten"


def save_with_outputs(name: str) -> None:
  """Executes notebooks/`name` and writes it back with its outputs, without per-cell timing
  metadata or the interpreter's version (so reruns differ only where outputs do)."""
  import tempfile
  path = NOTEBOOKS / name
  with tempfile.TemporaryDirectory() as tmp:
    notebook, seconds = execute(path, pathlib.Path(tmp))
  for cell in notebook.cells:
    cell.metadata.pop("execution", None)
  notebook.metadata = {"kernelspec": {"display_name": "Python 3 (ipykernel)",
                                      "language": "python", "name": "python3"},
                       "language_info": {"name": "python"}}
  nbformat.write(notebook, path)
  print(f"{path}: executed in {seconds:.1f} s, {png_count(notebook)} figures")


if __name__ == "__main__":
  if os.environ.get("READINGNOTES_DATA"):  # the kernel runs in notebooks/: a relative path would miss
    os.environ["READINGNOTES_DATA"] = os.path.abspath(os.environ["READINGNOTES_DATA"])
  for notebook_name in sys.argv[1:] or sorted(FIGURES):
    save_with_outputs(notebook_name)
