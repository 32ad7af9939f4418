"""What the server published: the public manifest and the copies it lists, checked as hostile input.

Before anything of a copy is loaded, the client checks (``PublishedCopy.verify``): the manifest's
every field by type, range and length; that each copy folder is a real folder inside the inbox and
holds only regular data files (weights, config, generation config, tokenizer: no code, no pickles,
no symlinks, FIFOs or devices); that no config carries ``auto_map`` (the hook that would make
transformers import Python shipped with the copy); that the files match the manifest's checksum; and
that the weight headers declare no more tensors than the config's architecture has. Models and
tokenizers are then loaded with ``trust_remote_code=False``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mpu.checkpoint import dir_sha256, read_json
from mpu.checkpoint.files import (
    CONFIG, MAX_MANIFEST_BYTES, MAX_MODEL_FILE_BYTES, TOKENIZER_CONFIG, check_data_folder, checked_path, is_model_file,
)
from mpu.errors import InputError
from mpu.protocol import PUBLICATION_MANIFEST, PublicationManifest

# A header may declare at most this many tensors per parameter of the architecture (MoE checkpoints
# store per-expert tensors that transformers fuses), plus a constant: a bound against crafted headers,
# not a validity check (loading checks the names).
TENSORS_PER_PARAMETER = 64
TENSOR_SLACK = 4096


@dataclass(frozen=True)
class PublishedCopy:
    """One copy of the publication: its 1-based ``id``, its folder ``path`` inside ``inbox`` and the
    ``sha256`` the manifest states for its files."""

    id: int
    path: Path
    sha256: str
    inbox: Path

    def verify(self) -> None:
        """Refuse a copy that is unsafe to load or not the one the manifest names, before loading it.

        Raises InputError naming the offending file: a symlinked/FIFO/device entry, a code or pickle
        file or any other non-data file, ``auto_map`` in a config, a checksum mismatch (corrupt or
        swapped copy), an unknown architecture, or a weight header larger than the architecture needs.
        """
        names = check_data_folder(self.path, self.inbox, "published copy", is_model_file)
        if CONFIG not in names:
            raise InputError(self.path / CONFIG, "missing: a copy is a Hugging Face model folder")
        for name in (CONFIG, TOKENIZER_CONFIG):
            if name in names:
                data = read_json(self.path / name, name, MAX_MODEL_FILE_BYTES)
                if not isinstance(data, dict):
                    raise InputError(self.path / name, "expected a JSON object")
                if "auto_map" in data:
                    raise InputError(self.path / name, "carries auto_map (custom code shipped with the copy); "
                                                       "the client never runs code from the server")
        if dir_sha256(self.path) != self.sha256:
            raise InputError(self.path, "checksum does not match the publication manifest (corrupt or modified copy)")
        self.check_weights()

    def check_weights(self) -> None:
        """The weight headers, counted against the tensors of the copy's architecture (built on the
        meta device: no memory, no code) before transformers parses them."""
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        from mpu.checkpoint import CheckpointReader

        try:
            config = AutoConfig.from_pretrained(self.path, trust_remote_code=False)
            with torch.device("meta"):
                shapes = {name: tuple(t.shape) for name, t in AutoModelForCausalLM.from_config(config, trust_remote_code=False).state_dict().items()}
        except Exception as err:  # transformers raises ValueError, KeyError, TypeError, OSError ...
            raise InputError(self.path / CONFIG, f"not a usable model config ({type(err).__name__}: {str(err)[:300]})") from None
        reader = CheckpointReader(self.path, max_tensors=TENSORS_PER_PARAMETER * len(shapes) + TENSOR_SLACK)
        unread = sorted(set(self.path.glob("*.safetensors")) - set(reader.shards()))
        if unread:
            raise InputError(unread[0], "weight file not named in the copy's index")
        for name in reader.names():
            if name in shapes and reader.shape(name) != shapes[name]:
                raise InputError(reader.shard(name), f"tensor {name} has shape {reader.shape(name)}, the config's architecture needs {shapes[name]}")


@dataclass(frozen=True)
class Publication:
    """A validated publication: the inbox folder, its manifest and the copies it lists."""

    inbox: Path
    round: int
    publication_id: str
    copies: list[PublishedCopy]
    manifest: PublicationManifest

    def select(self, copy_ids: list[int] | None) -> list[PublishedCopy]:
        """The copies with these 1-based ids, in the order given (repeats dropped); all copies for
        None or an empty list. Raises InputError naming the manifest for an id it does not list."""
        if not copy_ids:
            return self.copies
        by_id = {copy.id: copy for copy in self.copies}
        unknown = sorted(set(copy_ids) - set(by_id))
        if unknown:
            raise InputError(self.inbox / PUBLICATION_MANIFEST, f"no copy {unknown}; published copies are {sorted(by_id)}")
        return [by_id[copy_id] for copy_id in dict.fromkeys(copy_ids)]


def read_publication(inbox: str | Path) -> Publication:
    """Read and validate ``inbox/manifest.json`` (:meth:`PublicationManifest.from_json`): every field
    checked by type, range and length; copy ids and folders unique. Raises InputError naming the manifest."""
    inbox = Path(inbox)
    path = checked_path(inbox, PUBLICATION_MANIFEST, "publication manifest")
    manifest = PublicationManifest.from_json(read_json(path, "publication manifest", MAX_MANIFEST_BYTES), path)
    copies = [PublishedCopy(entry.id, inbox / entry.path, entry.sha256, inbox) for entry in manifest.copies]
    return Publication(inbox, manifest.round, manifest.publication_id, copies, manifest)
