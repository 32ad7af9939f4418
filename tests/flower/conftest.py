"""tests/flower needs the optional Flower dependency (`pip install -e ".[flower]"`, part of `.[test]`).

Its tests share one pytest-xdist worker (``--dist loadgroup``): a SuperLink binds its other APIs
(ServerAppIo, Control) to fixed default ports, so two federations at once would collide."""

import importlib.util
from pathlib import Path

import pytest

collect_ignore_glob = [] if importlib.util.find_spec("flwr") is not None else ["test_*.py"]

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items):
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.xdist_group("flower"))
