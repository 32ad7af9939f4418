"""What the server published: the public manifest and the copies it lists, checked as hostile input.

Before anything of a copy is loaded, the client checks (``Publication.verify``): the manifest's
every field by type, range and length; that each copy folder is a real folder inside the inbox and
holds only regular, singly-linked data files of bounded size (weights, config, generation config,
tokenizer: no code, no pickles, no symlinks, hard links, FIFOs or devices); that every JSON file is
strict JSON and no config carries a key that makes transformers fetch or run code (``FORBIDDEN_KEYS``:
``auto_map``, a hub attention kernel, a quantizer ...) or a key its architecture does not define; that
the architecture is one the server can publish (``supported_architectures``), its depth bounded under
every name its config class gives it, and a ``tokenizer_class`` names a tokenizer class; that the files
match the manifest's checksum; that the weights hold exactly the architecture's tensors (names through
transformers' own checkpoint conversion, shapes, float dtype, finite values; headers counted before
parsing) and that the buffers the architecture builds from its config alone are no larger than its
parameters, before transformers allocates anything; and that all copies share one architecture. Models
and tokenizers are then loaded with ``trust_remote_code=False``."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from mpu.checkpoint import dir_sha256, read_json
from mpu.checkpoint.files import (
    CONFIG, GENERATION_CONFIG, MAX_MANIFEST_BYTES, MAX_MODEL_FILE_BYTES, TOKENIZER_CONFIG, check_data_folder, checked_path,
    is_model_file, is_weight_file, outside_file_references,
)
from mpu.checkpoint.received import CopySharing, private_copy
from mpu.errors import NAME_CHARS, InputError, shown
from mpu.protocol import PUBLICATION_MANIFEST, PublicationManifest

# The label of the client's private copies of a publication (Publication.received).
RECEIVED_INBOX = "mpu-inbox"
# A header may declare at most this many tensors per parameter of the architecture (MoE checkpoints
# store per-expert tensors that transformers fuses), plus a constant: a bound against crafted headers,
# counted before they are parsed. The names are checked after (``check_weights``): each must load into
# a tensor of the architecture, per-expert names only in MoE families and only as their own experts.
TENSORS_PER_PARAMETER = 64
TENSOR_SLACK = 4096
# Config keys that make transformers fetch or run code, or load the weights through another path:
# custom classes (auto_map, custom_pipelines), attention kernels downloaded from the hub
# ("attn_implementation": "org/repo"), quantizers, generate() replaced by hub code. Refused at any
# depth of config.json, tokenizer_config.json and generation_config.json.
FORBIDDEN_KEYS = frozenset({
    "auto_map", "custom_pipelines", "trust_remote_code", "attn_implementation", "_attn_implementation",
    "_attn_implementation_internal", "experts_implementation", "quantization_config", "custom_generate",
})
# The dtypes a copy's config and weights may state (the publish dtypes, and float64 for a source model in it).
WEIGHT_DTYPES = ("float32", "bfloat16", "float16", "float64")
# Blocks a config may declare before its architecture is built (on the meta device, one module per
# block): far above any released model (Llama 3.1 405B has 126), far below a config that would take
# minutes and gigabytes to build (10**6 blocks).
MAX_LAYERS = 1024
# Config sizes bounded before the architecture is built, by their canonical name. A config class may
# store one under another name (its ``attribute_map``: GPT-2 writes ``n_layer``): every name is checked
# in config.json, and the parsed config is checked again through the canonical attribute.
BOUNDED_SIZES = {"num_hidden_layers": MAX_LAYERS}
# No bound on the position count (max_position_embeddings, n_positions): in no supported family does it
# size anything transformers allocates from the config alone (measured for every registered family on
# the meta device, transformers 5: the only buffers are rotary inverse frequencies, head_dim/2 long,
# whatever the position count), and released configs state 131072 positions (Llama 3.2, Qwen 2.5,
# Gemma 3) or more. Architectures that build position-sized causal masks or sinusoid tables (GPT-J,
# GPT-Neo, CodeGen, CTRL, XGLM) are not supported; and whatever config value might size a buffer in
# another transformers release is caught by ``check_weights``: the buffers an architecture builds from
# its config (non-persistent: never in the weights) may hold no more values than its parameters, which
# the weights must hold.
# tokenizer_class (tokenizer_config.json, config.json) names the class AutoTokenizer loads: a name,
# resolved by transformers, that must turn out to be a tokenizer class (``_check_tokenizer_class``).
_CLASS_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,99}$")


def supported_architectures() -> list[str]:
    """The model_types a copy may have: the families the server can publish, those registered in
    :data:`mpu.reparam.ARCHITECTURES`, as registered."""
    from mpu.reparam import ARCHITECTURES

    return ARCHITECTURES.names()


@dataclass(frozen=True)
class PublishedCopy:
    """One copy of the publication: its 1-based ``id``, its folder ``path`` inside ``inbox`` and the
    ``sha256`` the manifest states for its files."""

    id: int
    path: Path
    sha256: str
    inbox: Path
    architecture: str | None = None  # the manifest's model_type, when it states one
    dtype: str | None = None  # the manifest's publish dtype, when it states one
    received_as: Path | None = None  # for a private copy (Publication.received): the folder it was copied from

    @property
    def shown_path(self) -> Path:
        """The folder as received: the inbox's copy folder, also for a private copy of it."""
        return self.received_as or self.path

    def verify(self, max_parameters: int | None = None, why_max: str = "") -> dict[str, tuple[int, ...]]:
        """Refuse a copy that is unsafe to load or not the one the manifest names, before loading it.

        Raises InputError naming the offending file: a symlinked/FIFO/device/hard-linked entry, a code
        or pickle file or any other non-data file, a file above ``MAX_MODEL_FILE_BYTES``, a JSON file
        that is not strict JSON (repeated keys, NaN), a ``FORBIDDEN_KEYS`` key in a config, a config
        key its architecture does not define, a checksum mismatch (corrupt or swapped copy), an
        architecture the server cannot publish or one other than the manifest's, a depth above
        ``MAX_LAYERS`` under any of its names, a ``tokenizer_class`` that is not a tokenizer class, a
        malformed generation config, weights that do not match the architecture (:meth:`check_weights`),
        and, before the checksum reads the weights, a model of more than ``max_parameters`` values
        (``why_max`` says why; default: no bound). Returns the tensor shapes by name.
        """
        names = check_data_folder(self.path, self.inbox, "published copy", is_model_file)
        if CONFIG not in names:
            raise InputError(self.path / CONFIG, "missing: a copy is a Hugging Face model folder")
        for name in names:
            if is_weight_file(name):
                continue
            size = os.lstat(self.path / name).st_size
            if size > MAX_MODEL_FILE_BYTES:
                raise InputError(self.path / name, f"is {size} bytes, more than the {MAX_MODEL_FILE_BYTES} a config or tokenizer file may have")
            if name.endswith(".json"):
                data = read_json(self.path / name, name, MAX_MODEL_FILE_BYTES)  # strict: no repeated keys, NaN, deep nesting
                if name in (CONFIG, TOKENIZER_CONFIG, GENERATION_CONFIG):
                    if not isinstance(data, dict):
                        raise InputError(self.path / name, "expected a JSON object")
                    _refuse_forbidden_keys(data, self.path / name)
                outside = outside_file_references(data, names) if isinstance(data, dict) else []
                if outside:   # transformers would join the value to the copy's folder: a file from anywhere
                    key, value = outside[0]
                    raise InputError(self.path / name, f"{key} names {shown(value, NAME_CHARS)}, which is no file of this "
                                                       "copy: a copy's files may name only the files beside them")
                if name == TOKENIZER_CONFIG:
                    _check_tokenizer_class(data.get("tokenizer_class"), self.path / name)
                    length = data.get("model_max_length")
                    if length is not None and (isinstance(length, bool) or not isinstance(length, (int, float)) or not length > 0):
                        raise InputError(self.path / name, f"model_max_length must be a positive number, got {shown(length)}")
        self._check_config(read_json(self.path / CONFIG, CONFIG, MAX_MODEL_FILE_BYTES))
        if GENERATION_CONFIG in names:
            self._check_generation_config()
        # headers before the checksum: they bound every weight file's size by the architecture, so a
        # sparse terabyte is refused before it is read, and a model too large for this machine too
        shapes = self.check_weights(values=False)
        parameters = sum(math.prod(shape) for shape in shapes.values())
        if max_parameters is not None and parameters > max_parameters:
            raise InputError(self.path / CONFIG, f"the model has {parameters:,} parameters, more than the {max_parameters:,} "
                                                 f"this machine can load ({why_max})")
        if dir_sha256(self.path) != self.sha256:
            raise InputError(self.path, "checksum does not match the publication manifest (corrupt or modified copy)")
        self.check_weights()
        return shapes

    def _check_config(self, config: dict[str, Any]) -> None:
        """config.json before transformers reads it: a ``model_type`` of a supported family
        (:func:`supported_architectures`; the manifest's, when it states one), only the keys that
        architecture's config class defines, a float ``dtype``, at most ``MAX_LAYERS`` blocks under
        every name the config class gives the depth, and a ``tokenizer_class`` (if any) that names a
        tokenizer class."""
        from transformers import CONFIG_MAPPING

        path = self.path / CONFIG
        model_type = config.get("model_type")
        supported = supported_architectures()
        if not isinstance(model_type, str) or model_type not in supported or model_type not in CONFIG_MAPPING:
            raise InputError(path, f"model_type {str(model_type)[:40]!r} is not an architecture mpu publishes; supported: "
                                   f"{', '.join(supported)} (remote code is never used)")
        if self.architecture is not None and model_type != self.architecture:
            raise InputError(path, f"model_type {model_type!r}, the publication manifest says {self.architecture!r}")
        config_class = CONFIG_MAPPING[model_type]
        known = set(config_class().to_dict()) | {"head_dim"}
        unknown = sorted(str(key)[:40] for key in config if key not in known)
        if unknown:
            raise InputError(path, f"keys {unknown[:5]} are not {model_type} config keys; a published config holds only its architecture's")
        for key in ("dtype", "torch_dtype"):
            if config.get(key) is not None and config[key] not in WEIGHT_DTYPES:
                raise InputError(path, f"{key} {str(config[key])[:40]!r} is not one of {WEIGHT_DTYPES}")
        for size, limit in BOUNDED_SIZES.items():
            for key in _spellings(config_class, size):
                _check_size(config.get(key), key if key == size else f"{key} ({size})", limit, path)
        _check_tokenizer_class(config.get("tokenizer_class"), path)

    def _check_generation_config(self) -> None:
        from transformers import GenerationConfig

        try:
            GenerationConfig.from_pretrained(self.path).validate(strict=True)
        except Exception as err:  # transformers raises ValueError, TypeError, OSError ...
            raise InputError(self.path / GENERATION_CONFIG, f"not a valid generation config ({type(err).__name__}: {str(err)[:300]})") from None

    def check_weights(self, values: bool = True) -> dict[str, tuple[int, ...]]:
        """The weight headers, counted against the tensors of the copy's architecture (built on the
        meta device: no memory, no code) before transformers parses them; then every stored tensor is
        one the architecture loads (:func:`_load_targets`), every tensor the architecture needs is
        there with its shape, in a float dtype (the manifest's, when it states one), and, with
        ``values``, with finite values (read one tensor at a time). Returns the tensor shapes by name.

        Before the architecture is built, its depth is bounded again on the parsed config (through the
        config class's ``attribute_map``); once built, its buffers (sized by the config alone and
        allocated in full at load: a causal mask or sinusoid table of ``positions²`` values) may hold no
        more values than its parameters.

        A tensor the weights lack would be initialised at random by transformers, and allocated in
        full whatever the config says (a vocabulary of 10**9 is 256 GB): it is refused instead, by name
        and by count (the weights must hold at least as many values as the architecture's parameters).
        A tensor of no model tensor (``junk.extra``) would load nowhere and fail only when the update
        is written, after the copy trained: it is refused too.
        """
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        from mpu.checkpoint import CheckpointReader

        path = self.path / CONFIG
        try:
            config = AutoConfig.from_pretrained(self.path, trust_remote_code=False)
        except Exception as err:  # transformers raises ValueError, KeyError, TypeError, OSError ...
            raise InputError(path, f"not a usable model config ({type(err).__name__}: {str(err)[:300]})") from None
        for size, limit in BOUNDED_SIZES.items():
            _check_size(getattr(config, size, None), size, limit, path)   # the attribute_map applies
        try:
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
            shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
            parameters = {name: p.numel() for name, p in model.named_parameters()}  # tied weights once
            aliases: dict[int, list[str]] = {}  # a tied parameter under each of its names
            for name, parameter in model.named_parameters(remove_duplicate=False):
                aliases.setdefault(id(parameter), []).append(name)
            buffers = sum(buffer.numel() for buffer in model.buffers())
            conversion = _Conversion(model, config, shapes)
        except Exception as err:  # transformers raises ValueError, KeyError, TypeError, OSError ...
            raise InputError(path, f"not a usable model config ({type(err).__name__}: {str(err)[:300]})") from None
        needed = sum(parameters.values())
        if buffers > needed:
            raise InputError(path, f"the {config.model_type} architecture of this config builds buffers of {buffers} values from the "
                                   f"config alone (more than its {needed} parameters), allocated in full at load")
        reader = CheckpointReader(self.path, max_tensors=TENSORS_PER_PARAMETER * len(shapes) + TENSOR_SLACK)
        unread = sorted(set(self.path.glob("*.safetensors")) - set(reader.shards()))
        if unread:
            raise InputError(unread[0], "weight file not named in the copy's index")
        stored = reader.names()
        for name in stored:
            dtype = str(reader.dtype(name)).removeprefix("torch.")
            if dtype not in WEIGHT_DTYPES or (self.dtype is not None and dtype != self.dtype):
                wanted = self.dtype if self.dtype is not None else f"one of {WEIGHT_DTYPES}"
                raise InputError(reader.shard(name), f"tensor {name} is {dtype}; the copy's weights are {wanted}")
        loaded = _load_targets(reader, conversion, config.model_type)
        missing = sorted(names[0] for names in aliases.values() if not loaded.intersection(names))
        if missing:
            raise InputError(self.path, f"weights lack {len(missing)} tensor(s) of the config's architecture: {', '.join(missing[:5])}")
        if reader.numel() < needed:
            raise InputError(self.path, f"weights hold {reader.numel()} values, the config's architecture has {needed} parameters")
        for name in stored if values else ():
            if not torch.isfinite(reader.get(name)).all():
                raise InputError(reader.shard(name), f"tensor {name} contains NaN or Inf")
        return {name: reader.shape(name) for name in stored}


class _Conversion:
    """How transformers loads a checkpoint name into the model: its renamings (Pythia's ``embed_out``
    is ``lm_head``, Mixtral's ``block_sparse_moe`` is ``mlp``) and, for a MoE family only, the converters
    that fuse per-expert tensors (``...experts.3.w1.weight``) into one (``...experts.gate_up_proj``)."""

    def __init__(self, model, config, shapes: dict[str, tuple[int, ...]]):
        from mpu.reparam import ARCHITECTURES
        from mpu.reparam.base import checkpoint_conversion
        from mpu.reparam.moe import MoeAdapter

        self.shapes = shapes
        self.renamings, converters, self.prefix = checkpoint_conversion(model)
        family = ARCHITECTURES.get(config.model_type) if config.model_type in ARCHITECTURES.names() else None
        moe = isinstance(family, type) and issubclass(family, MoeAdapter)
        self.converters = converters if moe else []

    def target(self, name: str) -> tuple[str, Any, str | None]:
        """(the model tensor ``name`` loads into, the converter that fuses it or None, the source
        pattern it matched or None)."""
        from transformers.core_model_loading import rename_source_key

        target, pattern = rename_source_key(name, self.renamings, self.converters, self.prefix, self.shapes)
        converter = next((c for c in self.converters if pattern in c.source_patterns), None) if pattern is not None else None
        return target, converter, pattern

    def renamed(self, name: str) -> str:
        from transformers.core_model_loading import apply_renamings

        return apply_renamings(name, self.renamings)


def _load_targets(reader, conversion: _Conversion, model_type: str) -> set[str]:
    """The model tensors the stored tensors load into. Raises InputError naming the weight file for a
    tensor that loads into no tensor of the architecture, has another shape than it, or loads where
    another stored tensor does; a per-expert tensor (MoE families only) must be one expert's slice of
    the fused tensor, of an expert the fused tensor has, and the weights must hold every expert's."""
    from transformers.core_model_loading import Concatenate, MergeModulelist

    direct: dict[str, str] = {}  # model tensor -> the stored tensor that loads into it
    experts: dict[str, dict[tuple[int, int], str]] = {}  # fused tensor -> (source pattern, expert) -> stored tensor
    for name in reader.names():
        target, converter, pattern = conversion.target(name)
        shape = reader.shape(name)
        if target not in conversion.shapes:
            raise InputError(reader.shard(name), f"tensor {name} is not a tensor of the {model_type} architecture "
                                                 "(it would load into none of its tensors)")
        if converter is None:
            if target in direct or target in experts:
                raise InputError(reader.shard(name), f"tensors {direct.get(target, target)} and {name} both load into {target}")
            if shape != conversion.shapes[target]:
                raise InputError(reader.shard(name), f"tensor {name} has shape {shape}, the config's architecture needs {conversion.shapes[target]}")
            direct[target] = name
            continue
        # a per-expert tensor of a MoE checkpoint: <prefix><pattern with the expert number>, nothing else
        fused = conversion.shapes[target]
        index = converter.source_patterns.index(pattern)
        parts = len(converter.source_patterns)
        match = re.fullmatch(r"(.*?)" + re.escape(pattern.removeprefix("^")).replace(r"\*", r"(0|[1-9][0-9]{0,8})"), conversion.renamed(name))
        if match is not None and match.group(1) and (pattern.startswith("^") or not (pattern.startswith(".") or match.group(1).endswith("."))):
            match = None   # an anchored pattern, or one that starts a module name ("mlp.experts..." is not "...xmlp.experts...")
        expert = int(match.group(2)) if match else None
        ops = list(getattr(converter, "operations", []))
        plain = (ops and isinstance(ops[0], MergeModulelist) and ops[0].dim == 0
                 and all(isinstance(op, Concatenate) and op.num_shards_attribute is None and 1 <= op.dim < len(fused) for op in ops[1:]))
        if (match is None or match.group(1) + converter.target_patterns[0] != target or pattern.count("*") != 1
                or not plain or len(fused) < 2 or expert >= fused[0]):
            raise InputError(reader.shard(name), f"tensor {name} is not a per-expert tensor of the {model_type} architecture "
                                                 f"(its {target} holds experts 0..{fused[0] - 1 if fused else -1})")
        wanted = list(fused[1:])
        for op in ops[1:]:
            wanted[op.dim - 1] //= parts
        if shape != tuple(wanted):
            raise InputError(reader.shard(name), f"tensor {name} has shape {shape}, an expert of the config's architecture needs {tuple(wanted)}")
        if target in direct or (index, expert) in experts.get(target, {}):
            other = direct.get(target) or experts[target][(index, expert)]
            raise InputError(reader.shard(name), f"tensors {other} and {name} both load into {target}")
        experts.setdefault(target, {})[(index, expert)] = name
    for target, sources in experts.items():
        _, converter, _ = conversion.target(next(iter(sources.values())))
        complete = conversion.shapes[target][0] * len(converter.source_patterns)
        if len(sources) != complete:
            raise InputError(reader.shard(next(iter(sources.values()))),
                             f"weights hold {len(sources)} of the {complete} per-expert tensors of {target}")
    return set(direct) | set(experts)


def _spellings(config_class, name: str) -> list[str]:
    """``name`` and every other key under which ``config_class`` stores it (its ``attribute_map``, both ways)."""
    attribute_map = getattr(config_class, "attribute_map", None) or {}
    names = [name, attribute_map.get(name)] + [alias for alias, canonical in attribute_map.items() if canonical == name]
    return list(dict.fromkeys(n for n in names if isinstance(n, str)))


def _check_size(value: Any, what: str, limit: int, path: Path) -> None:
    if value is not None and (type(value) is not int or not 1 <= value <= limit):
        raise InputError(path, f"{what} must be an integer in [1, {limit}], got {str(value)[:40]}")


def _check_tokenizer_class(value: Any, path: Path) -> None:
    """Refuse a ``tokenizer_class`` that does not name a transformers tokenizer class (a subclass of
    ``PreTrainedTokenizerBase``) under every spelling AutoTokenizer resolves (the name, without its
    ``Fast`` suffix and with it): any attribute of the transformers package would be used (a config
    class, a model). Only transformers' own names are resolved; no code of the copy runs."""
    if value is None:
        return
    if not isinstance(value, str) or not _CLASS_NAME.fullmatch(value):
        raise InputError(path, f"tokenizer_class {str(value)[:40]!r} is not the name of a transformers tokenizer class")
    from transformers import PreTrainedTokenizerBase
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    stem = value.removesuffix("Fast")
    found = False
    for name in dict.fromkeys((value, stem, stem + "Fast")):
        try:
            resolved = tokenizer_class_from_name(name)
        except Exception as err:  # a tokenizer module that cannot be imported here
            raise InputError(path, f"tokenizer_class {value!r}: transformers cannot resolve {name} ({type(err).__name__})") from None
        if resolved is None:
            continue
        if not (isinstance(resolved, type) and issubclass(resolved, PreTrainedTokenizerBase)):
            raise InputError(path, f"tokenizer_class {value!r} names {name}, which is not a tokenizer class "
                                   "(a subclass of PreTrainedTokenizerBase)")
        found = True
    if not found:
        raise InputError(path, f"tokenizer_class {value!r} is not a transformers tokenizer class")


def _refuse_forbidden_keys(data: Any, path: Path, depth: int = 0) -> None:
    """Raise InputError naming ``path`` for a ``FORBIDDEN_KEYS`` key at any depth of ``data``."""
    if isinstance(data, dict):
        for key, value in data.items():
            if key in FORBIDDEN_KEYS:
                raise InputError(path, f"carries {key} (it makes transformers fetch or run code, or load weights another way); "
                                       "the client never runs code from the server")
            _refuse_forbidden_keys(value, path, depth + 1)
    elif isinstance(data, list):
        for item in data:
            _refuse_forbidden_keys(item, path, depth + 1)


@dataclass(frozen=True)
class Publication:
    """A validated publication: the inbox folder, its manifest and the copies it lists."""

    inbox: Path
    round: int
    publication_id: str
    copies: list[PublishedCopy]
    manifest: PublicationManifest

    def verify(self, copies: list[PublishedCopy], max_parameters: int | None = None, why_max: str = "") -> dict[str, tuple[int, ...]]:
        """:meth:`PublishedCopy.verify` for each of ``copies`` (with ``max_parameters`` and ``why_max``),
        and that they share one set of tensor names and shapes (the server perturbs one model m times;
        a copy of another architecture would make its update unusable). Returns those shapes by tensor
        name (empty for no copies). Raises InputError naming the copy that differs."""
        first: tuple[PublishedCopy, dict] | None = None
        for copy in copies:
            shapes = copy.verify(max_parameters, why_max)
            if first is None:
                first = (copy, shapes)
            elif shapes != first[1]:
                differing = sorted(set(shapes) ^ set(first[1])) or sorted(n for n in shapes if shapes[n] != first[1][n])
                raise InputError(copy.path, f"copy {copy.id} does not have the tensors (names, shapes) of copy {first[0].id} "
                                            f"(first difference: {differing[0]})")
        return {} if first is None else first[1]

    @contextlib.contextmanager
    def received(self, copies: list[PublishedCopy], parent: str | Path,
                 sharing: CopySharing | None = None) -> Iterator["Publication"]:
        """This publication as a private copy in ``parent``: the manifest and the folders of ``copies``,
        copied after their folder check (:func:`mpu.checkpoint.received.private_copy`), read again from
        the copy and removed after the block. Checking and loading the copy, the client uses exactly the
        bytes it checked, whatever the server writes to the inbox meanwhile; errors still name the inbox's
        files. With ``sharing``, the processes of one launch on this machine share one copy. Raises InputError as :func:`read_publication` and ``check_data_folder`` do, and for a file
        that changed after its check."""
        files = {"": [PUBLICATION_MANIFEST]}
        for copy in copies:
            folder = copy.path.relative_to(self.inbox).as_posix()
            files[folder] = check_data_folder(copy.path, self.inbox, "published copy", is_model_file)
        with private_copy(self.inbox, files, parent, RECEIVED_INBOX, sharing=sharing,
                          elsewhere=" (set $MPU_CACHE to one, or chmod go-w the folders named)") as local:
            private = read_publication(local)
            if private.manifest != self.manifest:
                raise InputError(local / PUBLICATION_MANIFEST, "changed after it was checked")
            received_as = {copy.id: copy.path for copy in self.copies}
            yield dataclasses.replace(private, copies=[dataclasses.replace(copy, received_as=received_as[copy.id])
                                                       for copy in private.copies])

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
    copies = [PublishedCopy(entry.id, inbox / entry.path, entry.sha256, inbox, manifest.architecture, manifest.dtype)
              for entry in manifest.copies]
    return Publication(inbox, manifest.round, manifest.publication_id, copies, manifest)
