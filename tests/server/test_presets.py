"""The privacy presets are what the docs say they are."""

from __future__ import annotations

from pathlib import Path

from mpu.server.config import PRESETS, ServerConfig

DOCS = Path(__file__).resolve().parents[2] / "docs" / "privacy.md"


def describe(preset: str) -> str:
    """The one-line description docs/privacy.md gives of a preset, built from its settings."""
    config = ServerConfig(**{key: value for key, value in PRESETS[preset].items() if key != "reparam"},
                          reparam=PRESETS[preset].get("reparam", {}))
    parts = [f"{config.alpha_mode} α", f"noise scope {config.noise_scope}", f"V/O {'Haar' if config.reparam.vo == 'haar' else 'plane'}"]
    if config.reparam.kv_permutation:
        parts.append("KV-group permutation")
    if config.reparam.ffn_scaling:
        parts.append("FFN scaling")
    parts.append(f"τ = {config.independent_noise:g}")
    return f"Preset: `--privacy {preset}` = " + ", ".join(parts) + "."


def test_the_hardened_preset_is_the_documented_one():
    assert describe("hardened") == ("Preset: `--privacy hardened` = secret α, noise scope all, V/O Haar, "
                                    "KV-group permutation, FFN scaling, τ = 4.")
    assert describe("hardened") in DOCS.read_text(encoding="utf-8")

