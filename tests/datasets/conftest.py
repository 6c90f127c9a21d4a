"""Fixtures of the real-data loader tests: the shared data folder, no downloads."""

import os

import keras
import pytest


@pytest.fixture(scope="session")
def data_dir():
    """The shared data folder named by KERAS_MTL_DATA_DIR; skips the test when it is absent."""
    path = os.environ.get("KERAS_MTL_DATA_DIR")
    if not path or not os.path.isdir(path):
        pytest.skip(
            "real-data loader test: set KERAS_MTL_DATA_DIR to the folder of the shared data "
            "sets (for example ../shared/data) to run it"
        )
    return path


@pytest.fixture(autouse=True)
def no_download(monkeypatch):
    """Fails the test after the fact if anything called keras.utils.get_file.

    Tests that exercise the download path replace get_file themselves.
    """
    calls = []

    def refuse(*args, **kwargs):
        calls.append((args, kwargs))
        raise ConnectionError("downloads are disabled in tests")

    monkeypatch.setattr(keras.utils, "get_file", refuse)
    yield
    assert not calls, f"a test tried to download: {calls}"
