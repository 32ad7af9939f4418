"""Blocks come from the model's module tree, for every decoder family, and no tensor is published clean.

Each family is a tiny model built from its transformers config class and saved with
``save_pretrained``, so the checkpoint carries the family's own on-disk names (GPT-2/Falcon
``transformer.h.N``, Pythia ``gpt_neox.layers.N`` and ``embed_out``, OPT ``model.decoder.layers.N``,
Mixtral ``block_sparse_moe.experts.E.w1``, Qwen-MoE per-expert ``mlp.experts.E.*``).
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import pytest
import torch
import transformers

from mpu.checkpoint import CheckpointReader
from mpu.errors import UnsupportedArchitectureError
from mpu.reparam import ARCHITECTURES, IdentityAdapter, ReparamConfig, get_adapter
from mpu.reparam.base import BlockLayout
from mpu.server.config import ServerConfig
from mpu.server.init import init_server
from mpu.server.publish import OUTSIDE_BLOCKS, publish

_ATTN = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=128)
_GQA = dict(_ATTN, num_key_value_heads=2)
_MOE = dict(_GQA, num_experts=3, num_experts_per_tok=2, moe_intermediate_size=16)

# family -> (config class, tiny settings, the block list's path in the checkpoint on disk)
FAMILIES: dict[str, tuple[type, dict, str]] = {
    "llama": (transformers.LlamaConfig, _GQA, "model.layers"),
    "gpt2": (transformers.GPT2Config, dict(n_embd=32, n_layer=2, n_head=4, n_positions=128), "transformer.h"),
    "falcon": (transformers.FalconConfig, dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4), "transformer.h"),
    "gpt_neox": (transformers.GPTNeoXConfig, dict(_ATTN, tie_word_embeddings=False), "gpt_neox.layers"),
    "opt": (transformers.OPTConfig, dict(hidden_size=32, ffn_dim=48, num_hidden_layers=2, num_attention_heads=4,
                                         word_embed_proj_dim=32, max_position_embeddings=128), "model.decoder.layers"),
    "phi": (transformers.PhiConfig, _ATTN, "model.layers"),
    "stablelm": (transformers.StableLmConfig, _GQA, "model.layers"),
    "granite": (transformers.GraniteConfig, dict(_GQA, embedding_multiplier=2.0, residual_multiplier=0.5), "model.layers"),
    "mixtral": (transformers.MixtralConfig, dict(_GQA, num_local_experts=3, num_experts_per_tok=2), "model.layers"),
    "qwen2_moe": (transformers.Qwen2MoeConfig, dict(_MOE, shared_expert_intermediate_size=24), "model.layers"),
    "qwen3_moe": (transformers.Qwen3MoeConfig, dict(_MOE, head_dim=8), "model.layers"),
}


def family_config(family: str, vocab_size: int = 97, pad: int = 0, bos: int = 1, eos: int = 2) -> transformers.PretrainedConfig:
    cls, settings, _ = FAMILIES[family]
    return cls(**settings, vocab_size=vocab_size, pad_token_id=pad, bos_token_id=bos, eos_token_id=eos)


def save_family_model(family: str, path: Path, seed: int = 0, **config_args) -> Path:
    """A tiny float32 model of ``family`` with random weights, saved as transformers saves it.
    Norm weights and biases are random too (HF's ones and zeros would hide a tensor left clean)."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(family_config(family, **config_args))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() < 2:
                param.add_(0.3 * torch.randn_like(param))
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """family -> its tiny checkpoint (built once per module)."""
    cache: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in cache:
            cache[family] = save_family_model(family, tmp_path_factory.mktemp(family))
        return cache[family]

    return get


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_blocks_follow_the_module_tree(family, saved):
    names = CheckpointReader(saved(family)).names()
    prefix = FAMILIES[family][2]
    groups = get_adapter(family_config(family), ReparamConfig(enabled=False)).block_groups(names)

    blocks = {layer: group for layer, group in groups if layer is not None}
    assert sorted(blocks) == [0, 1]
    for layer, group in blocks.items():
        assert group == sorted(n for n in names if n.startswith(f"{prefix}.{layer}."))
    outside = sorted(group[0] for layer, group in groups if layer is None)
    assert outside == sorted(n for n in names if not n.startswith(f"{prefix}."))
    assert outside and all(len(group) == 1 for layer, group in groups if layer is None)


def test_moe_experts_on_disk_are_placed_through_the_conversion_mapping(saved):
    layout = BlockLayout(family_config("mixtral"))
    expert = "model.layers.1.block_sparse_moe.experts.2.w1.weight"
    assert expert in CheckpointReader(saved("mixtral")).names()
    assert layout.model_name(expert) == "model.layers.1.mlp.experts.gate_up_proj"
    assert layout.layer_of(expert) == 1


def test_pythia_head_is_a_known_tensor_outside_the_blocks():
    layout = BlockLayout(family_config("gpt_neox"))
    assert layout.model_name("embed_out.weight") == "lm_head.weight"
    assert layout.layer_of("embed_out.weight") is None and layout.is_placed("embed_out.weight")


def test_old_gpt2_names_without_the_base_prefix_are_placed():
    layout = BlockLayout(family_config("gpt2"))
    assert layout.layer_of("h.1.attn.c_attn.weight") == 1
    assert layout.layer_of("h.1.attn.bias") == 1  # the causal-mask buffer of old GPT-2 files
    assert layout.is_placed("wte.weight") and layout.layer_of("wte.weight") is None


def test_nested_language_model_blocks():
    config = transformers.Gemma3Config(
        text_config=dict(hidden_size=16, intermediate_size=24, num_hidden_layers=3, num_attention_heads=2,
                         num_key_value_heads=1, head_dim=8, vocab_size=300),
        vision_config=dict(hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
                           image_size=28, patch_size=14),
    )
    layout = IdentityAdapter(config, ReparamConfig(enabled=False)).layout   # get_adapter: gemma3 is not published
    assert (layout.prefix, layout.num_blocks) == ("model.language_model.layers", 3)
    assert layout.layer_of("model.language_model.layers.2.mlp.up_proj.weight") == 2
    assert layout.layer_of("model.vision_tower.vision_model.encoder.layers.1.mlp.fc1.weight") is None


@pytest.mark.parametrize("name", ["junk.weight", "transformer.h.7.ln_1.weight", "model.layers.0.mlp.up_proj.weight"])
def test_a_tensor_that_cannot_be_placed_is_refused_by_name(name, saved):
    names = CheckpointReader(saved("gpt2")).names() + [name]
    adapter = get_adapter(family_config("gpt2"), ReparamConfig(enabled=False))
    with pytest.raises(UnsupportedArchitectureError, match=f"gpt2: cannot place 1 tensor.*{name.replace('.', '[.]')}"):
        adapter.block_groups(names)
    with pytest.raises(UnsupportedArchitectureError, match="cannot place"):
        adapter.check_names(names)


def test_init_refuses_a_checkpoint_with_an_unplaceable_tensor(tmp_path, saved, capsys):
    from safetensors.torch import load_file, save_file

    from mpu.cli import main

    model_dir = tmp_path / "model"
    shutil.copytree(saved("gpt2"), model_dir)
    tensors = load_file(model_dir / "model.safetensors")
    save_file({**tensors, "transformer.extra.weight": torch.ones(3)}, model_dir / "model.safetensors", metadata={"format": "pt"})
    code = main(["server", "init", "--model", str(model_dir), "--no-reparam", "--workdir", str(tmp_path / "server")])
    assert code == 2
    assert "transformer.extra.weight" in capsys.readouterr().err
    assert not (tmp_path / "server").exists()


def test_publish_refuses_an_unplaceable_tensor_before_writing(tmp_path, saved, monkeypatch):
    work = tmp_path / "server"
    init_server(work, str(saved("gpt2")), None, ServerConfig(copies=2, kappa=0.1, fixed_seed=1, reparam={"enabled": False}), progress=False)
    real_names = CheckpointReader.names
    monkeypatch.setattr(CheckpointReader, "names", lambda self: real_names(self) + ["transformer.extra.weight"])
    with pytest.raises(UnsupportedArchitectureError, match="transformer.extra.weight"):
        publish(work, tmp_path / "outbox", progress=False)
    assert not (tmp_path / "outbox").exists()


def test_unknown_family_is_named_even_without_reparameterisation():
    config = transformers.PretrainedConfig(num_hidden_layers=2)
    config.model_type = "made_up_lm"
    for enabled in (True, False):   # clients refuse copies of an unregistered architecture either way
        with pytest.raises(UnsupportedArchitectureError, match="'made_up_lm'"):
            get_adapter(config, ReparamConfig(enabled=enabled))
    with pytest.raises(UnsupportedArchitectureError, match="'made_up_lm'.*cannot build"):
        IdentityAdapter(config, ReparamConfig(enabled=False)).check_names(["model.layers.0.x.weight"])


def _published(work: Path, outbox: Path, model_dir: Path, config: ServerConfig):
    init_server(work, str(model_dir), None, config, progress=False)
    report = publish(work, outbox, progress=False)
    theta = CheckpointReader(model_dir)
    return report, theta, [CheckpointReader(outbox / f"copy-{k}") for k in range(1, config.copies + 1)]


def _reparam_modes(family: str) -> list[bool]:
    return [False, True] if family in ARCHITECTURES else [False]


@pytest.mark.parametrize("family,reparam", [(f, r) for f in sorted(FAMILIES) for r in _reparam_modes(f)])
def test_no_published_tensor_equals_the_private_one(family, reparam, tmp_path, saved):
    config = ServerConfig(copies=2, kappa=0.05, fixed_seed=3, noise_scope="all", reparam={"enabled": reparam})
    report, theta, copies = _published(tmp_path / "server", tmp_path / "outbox", saved(family), config)
    assert not report.clean
    for copy in copies:
        assert copy.names() == theta.names()
        for name in theta.names():
            private, published = theta.get(name), copy.get(name)
            assert not torch.equal(published, private), f"{name} published clean"
            # not just one value off: the noise reaches (almost) every element
            assert (published == private).float().mean() < 0.01, name


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_blocks_scope_leaves_only_the_outside_tensors_clean_and_reports_them(family, tmp_path, saved, caplog):
    config = ServerConfig(copies=2, kappa=0.05, fixed_seed=3, reparam={"enabled": False})
    with caplog.at_level(logging.INFO, logger="mpu.server.publish"):
        report, theta, copies = _published(tmp_path / "server", tmp_path / "outbox", saved(family), config)
    prefix = FAMILIES[family][2]
    outside = {n for n in theta.names() if not n.startswith(f"{prefix}.")}
    assert report.clean == {name: OUTSIDE_BLOCKS for name in outside}
    (logged,) = [r.getMessage() for r in caplog.records if "without noise" in r.getMessage()]
    assert all(name in logged for name in outside)
    for copy in copies:
        clean = {name for name in theta.names() if torch.equal(copy.get(name), theta.get(name))}
        assert clean == outside
    # sigma follows the blocks: kappa x the RMS of each block's tensors (no base: of theta itself)
    assert [block.group for block in report.blocks] == ["layer.0", "layer.1"]
    for block in report.blocks:
        values = torch.cat([theta.get(n).flatten() for n in theta.names() if n.startswith(f"{prefix}.{block.group[6:]}.")])
        assert math.isclose(block.sigma, 0.05 * float(values.square().mean().sqrt()), rel_tol=1e-4)


def test_a_model_without_a_block_list_of_the_configured_depth_is_refused_by_family():
    from mpu.reparam.base import _find_blocks

    model = transformers.AutoModelForCausalLM.from_config(family_config("gpt2"))
    deeper = family_config("gpt2")
    deeper.n_layer = 3
    with pytest.raises(UnsupportedArchitectureError, match=r"'gpt2': cannot tell its transformer blocks.*transformer\.h \(2\)"):
        _find_blocks(model, deeper, "gpt2")


def test_a_block_equal_to_the_base_is_published_clean_with_a_warning(tmp_path, saved):
    from safetensors.torch import load_file, save_file

    model_dir = saved("gpt2")
    base_dir = tmp_path / "base"
    shutil.copytree(model_dir, base_dir)
    tensors = load_file(base_dir / "model.safetensors")  # the base differs from the model in block 0 only
    save_file({n: t + 0.1 if n.startswith("transformer.h.0.") else t for n, t in tensors.items()},
              base_dir / "model.safetensors", metadata={"format": "pt"})
    init_server(tmp_path / "server", str(model_dir), str(base_dir), ServerConfig(copies=2, kappa=0.05, fixed_seed=1, noise_scope="all", reparam={"enabled": False}), progress=False)
    report = publish(tmp_path / "server", tmp_path / "outbox", progress=False)
    same = sorted(n for n in tensors if not n.startswith("transformer.h.0."))
    assert sorted(report.clean) == same
    (warning,) = [w for w in report.warnings if "without noise" in w]
    assert "equal to the base" in warning and "transformer.h.1.ln_1.weight" in warning
