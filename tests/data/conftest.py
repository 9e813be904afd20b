"""Data tests: every test runs with a private temp dir.

TFDS leaves an empty `tmp*tfds` directory in the temp dir per builder it constructs, so
TMPDIR (and `tempfile.tempdir`) point into pytest's own tmp tree for the whole session.
Image generators and other helpers are in `data_helpers.py`.
"""

import tempfile

import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_tmpdir(tmp_path_factory):
  tmp = str(tmp_path_factory.mktemp("tmpdir"))
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("TMPDIR", tmp)
    mp.setattr(tempfile, "tempdir", tmp)
    yield tmp
