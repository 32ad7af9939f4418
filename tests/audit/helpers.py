"""Publishing a tiny round and regenerating the server's true transforms from its secrets."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoConfig

from mpu.protocol import RoundKeys
from mpu.reparam import get_adapter
from mpu.server.config import ServerConfig
from mpu.server.init import init_server
from mpu.server.noise import alphas_for_round
from mpu.server.publish import publish
from mpu.server.workdir import Workdir


def publish_round(tmp_path: Path, model_dir, base_dir, config: ServerConfig) -> tuple[Path, Path]:
    server, outbox = tmp_path / "server", tmp_path / "outbox"
    init_server(server, str(model_dir), str(base_dir) if base_dir else None, config, progress=False)
    publish(server, outbox, progress=False)
    return server, outbox


def round_secret(server: Path) -> bytes:
    return bytes.fromhex(json.loads((server / "secrets.json").read_text())["rounds"]["1"])


def true_transforms(server: Path, model_dir) -> dict[int, dict[int, object]]:
    """copy k -> layer -> the LayerTransform the server drew (regenerated from secrets.json)."""
    state = Workdir(server).load()
    adapter = get_adapter(AutoConfig.from_pretrained(model_dir), state.config.reparam)
    keys = RoundKeys(round_secret(server))
    layers = AutoConfig.from_pretrained(model_dir).num_hidden_layers
    return {k: {l: adapter.sample(l, keys.transform(k, l)) for l in range(layers)}
            for k in range(1, state.config.copies + 1)}


def true_alphas(server: Path) -> list[float]:
    state = Workdir(server).load()
    return alphas_for_round(state.config, round_secret(server))


def relative_truth(t1, tk, n_kv: int, intermediate: int) -> dict[str, torch.Tensor | None]:
    """The map from copy k's coordinates to copy 1's, U = T_1 T_k^-1, in LayerTransform's conventions
    (perm[i] = the copy-k index that lands at copy-1 index i; matrices and scales indexed by copy-k index)."""
    ident_kv, ident_ffn = torch.arange(n_kv), torch.arange(intermediate)
    p1 = t1.kv_perm if t1.kv_perm is not None else ident_kv
    pk = tk.kv_perm if tk.kv_perm is not None else ident_kv
    f1 = t1.ffn_perm if t1.ffn_perm is not None else ident_ffn
    fk = tk.ffn_perm if tk.ffn_perm is not None else ident_ffn
    out = {"kv_perm": torch.argsort(pk)[p1], "ffn_perm": torch.argsort(fk)[f1]}
    for field in ("qk", "vo"):
        a1, ak = getattr(t1, field), getattr(tk, field)
        if a1 is None:
            out[field] = None
            continue
        old = pk  # copy-k group b holds the server's group pk[b]
        out[field] = torch.stack([a1[old[b]] @ ak[old[b]].T for b in range(n_kv)])
    if t1.ffn_scale is not None:
        out["ffn_scale"] = t1.ffn_scale[fk] / tk.ffn_scale[fk]
    else:
        out["ffn_scale"] = None
    return out
