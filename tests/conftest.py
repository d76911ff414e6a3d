"""Fixtures shared by every test, and the markers each folder's tests get (unit, ray, deploy).

Plain helper functions live in helpers.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import MODELS

# folder under tests/ -> marker: `pytest -m unit` runs the fast in-process tests, `-m "not ray"` skips Ray
FOLDER_MARKERS = {"unit": "unit", "ray": "ray", "deploy": "deploy"}


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
