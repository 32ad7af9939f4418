"""tests/flower needs the optional Flower dependency (`pip install -e ".[flower]"`, part of `.[test]`)."""

import importlib.util

collect_ignore_glob = [] if importlib.util.find_spec("flwr") is not None else ["test_*.py"]
