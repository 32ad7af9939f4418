"""tests/flower needs the optional Flower dependency (`pip install -e ".[flower]"`, part of `.[test]`).

Federations (tests/flower/cluster.py) take a machine-wide file lock, so under pytest-xdist they run
one at a time whichever worker starts them."""

import importlib.util

collect_ignore_glob = [] if importlib.util.find_spec("flwr") is not None else ["test_*.py"]
