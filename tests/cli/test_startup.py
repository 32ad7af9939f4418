"""The ``mpu`` command answers ``--help`` and refuses a mistyped argument without importing torch or
transformers (several seconds on a busy machine): those are imported where they are used."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
HEAVY = ("torch", "transformers", "datasets", "peft")

# Every command group's help, and argument errors at each level. The subcommands that take the method
# flags (client unlearn, unlearn, run) list every method's hyperparameters, read from the method classes,
# so their help necessarily imports the methods.
ARGVS = [
    ["--help"],
    ["--version"],
    ["no-such-command"],
    ["server", "--help"],
    ["server", "init", "--help"],
    ["server", "init", "--model", "M", "--workdir", "W", "--no-such-flag"],
    ["server", "init", "--model", "M", "--workdir", "W", "--privacy", "no-such-preset"],
    ["server", "publish", "--help"],
    ["server", "aggregate"],
    ["server", "status", "--help"],
    ["client", "--help"],
    ["client"],
    ["data", "build", "--help"],
    ["finetune", "--help"],
    ["eval", "--help"],
    ["eval", "--benchmark", "no-such-benchmark"],
    ["demo", "--help"],
    ["demo", "--no-such-flag"],
    ["audit", "--help"],
    ["report", "--help"],
]

PROBE = """
import json, sys
from mpu.cli import main
heavy = {heavy!r}
seen = []
for argv in json.loads(sys.argv[1]):
    try:
        main(argv)
    except SystemExit:
        pass
    seen.append([argv, [name for name in heavy if name in sys.modules]])
print(json.dumps(seen))
"""


def test_help_and_argument_errors_do_not_import_torch():
    env = dict(os.environ, PYTHONPATH=str(SRC))

    done = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), json.dumps(ARGVS)],
                          env=env, capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert [argv for argv, _ in seen] == ARGVS  # every command ran
    loaded = [(argv, modules) for argv, modules in seen if modules]
    assert not loaded, f"imported before/while parsing: {loaded}"
