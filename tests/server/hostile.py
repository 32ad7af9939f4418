"""Shared helpers for the server's hostile-return tests: a published server, returns to corrupt, and
a byte-and-mode snapshot of a work directory."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

from mpu.cli import main


def workdir_hashes(root: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mode of every file (and every folder) under ``root``, links not followed."""
    snapshot = {}
    for path in sorted(root.rglob("*")):
        info = os.lstat(path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(info.st_mode) else "<dir>"
        snapshot[path.relative_to(root).as_posix()] = (digest, stat.S_IMODE(info.st_mode))
    return snapshot


def edit_manifest(update_dir: Path, **changes) -> None:
    path = update_dir / "update.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def refused(published: Path, tmp_path: Path, corrupt, capsys, *extra: str) -> str:
    """Copy the server and the good returns, corrupt the returns, aggregate through the CLI; assert
    exit code 2 and an untouched work directory; return the error message."""
    server = tmp_path / "server"
    shutil.copytree(published / "server", server)
    returns = tmp_path / "returns"
    shutil.copytree(published / "good", returns, symlinks=True)
    corrupt(returns, tmp_path)
    before = workdir_hashes(server)

    code = main(["server", "aggregate", "--workdir", str(server), "--returns", str(returns), *extra])

    message = capsys.readouterr().err
    assert code == 2, message
    assert workdir_hashes(server) == before
    assert str(returns) in message  # names the file
    assert "Traceback" not in message
    return message
