"""MPU over Flower (``flwr``): the same server and client, with the copies and updates carried as
Flower messages between a SuperLink and SuperNodes instead of folders copied by hand.

- :mod:`mpu.flower.server_app` (``app``: a ``ServerApp``): the round loop around
  ``mpu.server.publish``/``aggregate``/``export``;
- :mod:`mpu.flower.client_app` (``app``: a ``ClientApp``): ``mpu.client.unlearn.unlearn_copies`` on
  the data owner's own forget/retain files, named by the SuperNode's node config;
- :mod:`mpu.flower.files`: a folder as an ``ArrayRecord`` of file bytes and back;
- :mod:`mpu.flower.owners`: several data owners' updates of one copy, weighted by forget-set size.

``APP_DIR`` is the Flower App project (its ``pyproject.toml``) to pass to ``flwr run``.
docs/flower.md has the commands.
"""

from pathlib import Path

APP_DIR = Path(__file__).parent / "app"
