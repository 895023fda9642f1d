"""Shared test fixtures."""
import os
import pathlib

import pytest


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
  """The real data folder (../shared/data) named by READINGNOTES_DATA, or skip."""
  path = os.environ.get("READINGNOTES_DATA")
  if not path or not pathlib.Path(path).is_dir():
    pytest.skip("real data not found: set READINGNOTES_DATA=../shared/data")
  return pathlib.Path(path).resolve()
