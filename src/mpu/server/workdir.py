"""The server's work directory: round state, secrets (mode 0600) and the current model.

Layout::

    S/state.json        round counter, settings, what was published this round (mode 0600)
    S/secrets.json      one 128-bit secret per round (mode 0600; never leaves S)
    S/models/round-N/   theta after N aggregated rounds, float32, sharded per block
    S/.mpu-returns.received-<pid>-*/   while an aggregate runs: its private copy of the returns (mode 0700)

``state.json`` is the commit point: a new model directory counts only once the state names it,
so an interrupted command leaves the previous round intact and can simply be run again.
"""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mpu.checkpoint import atomic_write_json, read_json
from mpu.errors import InputError, MPUError
from mpu.server import randomness
from mpu.server.config import ServerConfig

STATE_FILE = "state.json"
SECRETS_FILE = "secrets.json"
PRIVATE = 0o600
FORMAT = "mpu-server-state/1"
# The label of an aggregate's private copy of the returns (mpu.server.validate.received_returns).
RECEIVED_RETURNS = "mpu-returns"


@dataclass(frozen=True)
class PublishedRound:
    """What the server published in the round in progress, as Post-Process needs it: the round, the
    publication id of its manifest, each copy's sha256 by 1-based copy id, and ||theta|| (Frobenius
    norm over every tensor) at publish time. Stored in ``state.json`` as
    ``{"round", "publication_id", "copies": [{"id", "sha256"}], "model_norm"}``."""

    round: int
    publication_id: str | None
    copies: dict[int, str]
    model_norm: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The ``state.json`` form."""
        return {"round": self.round, "publication_id": self.publication_id,
                "copies": [{"id": copy_id, "sha256": sha256} for copy_id, sha256 in self.copies.items()],
                "model_norm": self.model_norm}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PublishedRound":
        """From the ``state.json`` form (the server's own file; ``publication_id`` and ``model_norm`` may
        be absent in states written by early versions)."""
        return cls(data["round"], data.get("publication_id"), {copy["id"]: copy["sha256"] for copy in data["copies"]},
                   data.get("model_norm"))


@dataclass
class ServerState:
    """The server's round state: settings, the current model, the rounds done, what is published, the history."""

    config: ServerConfig
    model_dir: str  # relative to the work directory
    source_dtype: str  # dtype of the model the server started from, used by export
    model_type: str
    base: str | None = None
    base_sha256: str | None = None  # the base's weights at init (states written before it have none)
    rounds_done: int = 0
    published: PublishedRound | None = None  # the round in progress once published; None after aggregate
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def current_round(self) -> int:
        """1-based number of the round in progress."""
        return self.rounds_done + 1

    @property
    def finished(self) -> bool:
        """Whether every planned round has been aggregated."""
        return self.rounds_done >= self.config.rounds

    def to_dict(self) -> dict[str, Any]:
        """The ``state.json`` form, with its format tag."""
        return {
            "format": FORMAT,
            "config": self.config.to_dict(),
            "model_dir": self.model_dir,
            "source_dtype": self.source_dtype,
            "model_type": self.model_type,
            "base": self.base,
            "base_sha256": self.base_sha256,
            "rounds_done": self.rounds_done,
            "published": self.published.to_dict() if self.published is not None else None,
            "history": self.history,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ServerState":
        """From the ``state.json`` form. Raises MPUError for another format tag."""
        if data.get("format") != FORMAT:
            raise MPUError(f"unsupported server state format {data.get('format')!r}")
        data = {key: value for key, value in data.items() if key != "format"}
        data["config"] = ServerConfig.from_dict(data["config"])
        if data.get("published") is not None:
            data["published"] = PublishedRound.from_dict(data["published"])
        return cls(**data)


class Workdir:
    """The server's work directory (layout in the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def state_path(self) -> Path:
        """``state.json``, the commit point."""
        return self.path / STATE_FILE

    @property
    def secrets_path(self) -> Path:
        """``secrets.json``, one secret per round (mode 0600)."""
        return self.path / SECRETS_FILE

    def inputs(self, state: ServerState) -> tuple[Path, ...]:
        """The folders a server command reads and its outputs must never replace: the work directory
        and the base model recorded at init."""
        return (self.path, *([Path(state.base)] if state.base else []))

    def model_path(self, state: ServerState) -> Path:
        """The folder of the current theta named by ``state``."""
        return self.path / state.model_dir

    def exists(self) -> bool:
        """Whether the folder holds a server state."""
        return self.state_path.is_file()

    def load(self) -> ServerState:
        """The saved state. Raises InputError when there is none, MPUError when others can read it."""
        if not self.exists():
            raise InputError(self.path, "not an mpu server work directory (no state.json); run `mpu server init` first")
        self._check_private(self.state_path)
        return ServerState.from_dict(read_json(self.state_path, "server state"))

    def save(self, state: ServerState) -> None:
        """Write ``state`` atomically (mode 0600): the commit point of every command."""
        atomic_write_json(self.state_path, state.to_dict(), mode=PRIVATE)

    def round_secret(self, round_number: int, fixed_seed: int | None, *, create: bool) -> bytes:
        """The secret of a round; created (CSPRNG) on first publish, then reused so re-publishing
        the same round reproduces the same copies and aggregation regenerates the same transforms.
        ``SECRET_BYTES`` per round (``randomness.new_round_secret``), stored hex in ``secrets.json`` (mode 0600).
        Raises MPUError when the round has no secret and ``create`` is False, or when ``secrets.json`` is
        readable by others; InputError (from ``read_json``) when it is not valid JSON."""
        secrets_by_round = self._read_secrets()
        key = str(round_number)
        if key not in secrets_by_round:
            if not create:
                raise MPUError(f"round {round_number} was never published (no secret for it in {self.secrets_path})")
            secrets_by_round[key] = randomness.new_round_secret(fixed_seed, round_number).hex()
            atomic_write_json(self.secrets_path, {"rounds": secrets_by_round}, mode=PRIVATE)
        return bytes.fromhex(secrets_by_round[key])

    def _read_secrets(self) -> dict[str, str]:
        if not self.secrets_path.exists():
            return {}
        self._check_private(self.secrets_path)
        return dict(read_json(self.secrets_path, "server secrets")["rounds"])

    @staticmethod
    def _check_private(path: Path) -> None:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if mode & 0o077:
            raise MPUError(f"{path} is readable by others (mode {mode:o}); it holds private state: chmod 600 it")

    def clean_stale(self, state: ServerState) -> None:
        """Remove model directories and staging folders that the state does not name (left by an
        interrupted command). Private copies of returns that a killed aggregate left are removed by
        the next aggregate, before it copies (``mpu.checkpoint.received.remove_leftovers``)."""
        models = self.path / "models"
        if not models.is_dir():
            return
        for entry in models.iterdir():
            if (Path("models") / entry.name).as_posix() != state.model_dir:
                shutil.rmtree(entry, ignore_errors=True)
