"""Parameter-name conventions of Hugging Face causal LMs."""

from __future__ import annotations

import re
from typing import Iterable

# "model.layers.12.self_attn.q_proj.weight" -> block 12. Also matches nested language models
# ("model.language_model.layers.3...").
_BLOCK = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def layer_index(name: str) -> int | None:
    """The transformer block a parameter belongs to, or None for embeddings, final norm, LM head."""
    match = _BLOCK.search(name)
    return int(match.group(1)) if match else None


def layer_groups(names: Iterable[str]) -> list[tuple[int | None, list[str]]]:
    """Groups names by block, in block order; block-external tensors follow, one group each (key None).

    A group is the unit of streaming: Pre- and Post-Process hold one group (times m) in memory.
    Publish and aggregate group by the model's own blocks instead (``Adapter.block_groups``), which
    also covers names this pattern misses (GPT-2/Falcon ``transformer.h.N``).
    Embeddings and the LM head are often the largest single tensors, so they travel alone.
    """
    groups: dict[int | None, list[str]] = {}
    for name in names:
        groups.setdefault(layer_index(name), []).append(name)
    blocks = sorted(key for key in groups if key is not None)
    ordered: list[tuple[int | None, list[str]]] = [(key, sorted(groups[key])) for key in blocks]
    ordered.extend((None, [name]) for name in sorted(groups.get(None, [])))
    return ordered
