"""The client-side view: what the server can infer about the forget set from the m updates.

The server holds theta and, after Post-Process, every copy's update mapped back to its own
coordinates (it knows T_k). It can apply any one of them, or their combination, to theta and look at
which of its own training items got worse: a loss-based membership-inference test. The score of an
item is its loss increase ``NLL(theta + Delta) - NLL(theta)`` (the server can compute both), and the
AUC compares the forget items (members) with items that were not forgotten.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig

from mpu.checkpoint import CheckpointReader


def item_losses(model, tokenizer, rows: list[dict], batch_size: int = 32) -> np.ndarray:
    """Mean answer-token NLL of each QA row (the encoding the models are trained and evaluated with)."""
    from mpu.eval.encoding import encode
    from mpu.eval.engine import token_stats

    examples = [encode(tokenizer, "qa", row) for row in rows]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    try:
        stats = token_stats(model, examples, batch_size, pad)
    finally:
        model.train(was_training)
    return np.array([s.avg_loss for s in stats])


def server_updates(workdir: str | Path, returns_dir: str | Path, round_number: int) -> tuple[list[float], list[dict[str, torch.Tensor]]]:
    """The server's view of one round: its harmonic weights and each copy's update mapped back with
    T_k^-1 (theta's coordinates), exactly as Post-Process computes them. Server-side code: it reads
    the round secret."""
    from mpu.protocol import RoundKeys, update_folder
    from mpu.reparam import get_adapter
    from mpu.server.noise import alphas_for_round, harmonic_weights
    from mpu.server.workdir import Workdir

    work = Workdir(workdir)
    state = work.load()
    secret = work.round_secret(round_number, state.config.fixed_seed, create=False)
    keys = RoundKeys(secret)
    weights = harmonic_weights(alphas_for_round(state.config, secret))
    adapter = get_adapter(AutoConfig.from_pretrained(work.model_path(state)), state.config.reparam)
    updates = []
    for copy_id in range(1, state.config.copies + 1):
        reader = CheckpointReader(Path(returns_dir) / update_folder(copy_id))
        mapped = {}
        for name in reader.names():
            delta = reader.get(name).to(torch.float32)
            layer = adapter.layer_of(name)
            if layer is not None:
                transform = adapter.sample(layer, keys.transform(copy_id, layer))
                delta = adapter.apply(transform, name, delta, inverse=True)
            mapped[name] = delta
        updates.append(mapped)
    return weights, updates


def apply_update(model, update: dict[str, torch.Tensor], scale: float = 1.0):
    """``model`` with ``scale * update`` added (a new copy; tied weights are updated once)."""
    import copy

    new = copy.deepcopy(model)
    params = dict(new.named_parameters())
    with torch.no_grad():
        for name, delta in update.items():
            if name in params:
                params[name].add_(delta.to(params[name].dtype), alpha=scale)
    return new


def auc(members: np.ndarray, non_members: np.ndarray) -> float:
    """ROC AUC of the score (higher = more member-like) separating members from non-members."""
    from sklearn.metrics import roc_auc_score

    labels = np.r_[np.ones(len(members)), np.zeros(len(non_members))]
    return float(roc_auc_score(labels, np.r_[members, non_members]))
