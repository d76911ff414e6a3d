"""Fixtures shared by every test, and the markers each folder's tests get (unit, ray, deploy).

Plain helper functions live in helpers.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import MODELS, S3_ENV, S3Bucket

# folder under tests/ -> marker: `pytest -m unit` runs the fast in-process tests, `-m "not ray"` skips Ray
FOLDER_MARKERS = {"unit": "unit", "ray": "ray", "deploy": "deploy", "cluster": "cluster"}


def pytest_collection_modifyitems(config, items):
    tests = Path(__file__).parent
    for item in items:
        if tests in item.path.parents:
            folder = item.path.relative_to(tests).parts[0]
            if folder in FOLDER_MARKERS:
                item.add_marker(FOLDER_MARKERS[folder])


@pytest.fixture(params=list(MODELS))
def model_name(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    """A local S3-compatible endpoint (moto's server) on 127.0.0.1: 'host:port'."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint, monkeypatch) -> S3Bucket:
    """A new, empty bucket on the local endpoint; this process (and what it starts) has its credentials."""
    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)
    return S3Bucket.create(s3_endpoint)
