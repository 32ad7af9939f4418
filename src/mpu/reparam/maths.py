"""The linear algebra behind T_k: random orthogonal blocks and the two row operations.

Every transform in this package is one of two row operations, applied to a weight's rows (output
features) or, for a column transform, to the rows of its transpose:

- ``head_transform``: rows (or columns) grouped as (KV head j, query head g in its group, dim a). Each KV group's
  d_h x d_h rows are multiplied by an orthogonal M_j, then whole groups are permuted.
- ``unit_transform``: rows (or columns) are FFN intermediate units. Each unit is scaled by s_i**power, then units are
  permuted.

Both are exactly invertible (orthogonal matrices invert by transposition, scales by division), and
both are linear in the weight, which is what lets updates travel back with the same code.
All sampling functions take an explicit CPU ``torch.Generator`` and return float64 tensors.
"""

from __future__ import annotations

import math

import torch

F64 = torch.float64


def haar_orthogonal(batch: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """``batch`` independent Haar-random orthogonal n x n matrices, shape (batch, n, n).

    QR of a Gaussian matrix is Haar-distributed only once the signs are fixed so that R has a
    positive diagonal (otherwise the distribution depends on the QR implementation).
    """
    gaussian = torch.randn(batch, n, n, generator=generator, dtype=F64)
    q, r = torch.linalg.qr(gaussian)
    signs = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
    signs[signs == 0] = 1.0
    return q * signs.unsqueeze(-2)  # multiply column c of Q by sign(R_cc)


def rope_plane_rotation(angles: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Block rotations in HF's rotate_half planes, shape (batch, head_dim, head_dim).

    ``angles`` has shape (batch, rotary_dim / 2). HF's rotate_half pairs dim p with dim
    p + rotary_dim/2 inside the first rotary_dim dims, and RoPE rotates each such pair by a
    position-dependent angle. A second rotation in the same plane commutes with it, so q.k survives.
    Dims at and beyond rotary_dim are left as identity here.
    """
    batch, half = angles.shape
    out = torch.eye(head_dim, dtype=F64).repeat(batch, 1, 1)
    p = torch.arange(half)
    cos, sin = torch.cos(angles), torch.sin(angles)
    out[:, p, p] = cos
    out[:, p, p + half] = -sin
    out[:, p + half, p] = sin
    out[:, p + half, p + half] = cos
    return out


def rope_plane_signs(signs: torch.Tensor, head_dim: int, pass_signs: torch.Tensor | None) -> torch.Tensor:
    """Diagonal +-1 matrices, shape (batch, head_dim, head_dim): plane rotations by 0 or pi.

    ``signs`` (batch, rotary_dim/2) flips both dims of a RoPE plane together (rotation by pi, built
    exactly rather than from cos(pi) which is only -1 to round-off). ``pass_signs``
    (batch, head_dim - rotary_dim) flips the pass-through dims one by one. Such matrices commute with
    RoPE *and* with any per-dim norm weight (Qwen3's q_norm/k_norm), unlike general rotations.
    """
    batch, half = signs.shape
    diag = torch.ones(batch, head_dim, dtype=F64)
    diag[:, :half] = signs
    diag[:, half : 2 * half] = signs
    if pass_signs is not None:
        diag[:, 2 * half :] = pass_signs
    return torch.diag_embed(diag)


def random_signs(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Independent fair +-1 values as float64."""
    bits = torch.randint(0, 2, shape, generator=generator)
    return (2 * bits - 1).to(F64)


def uniform_angles(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Angles drawn uniformly from [0, 2 pi)."""
    return torch.rand(shape, generator=generator, dtype=F64) * (2 * math.pi)


def log_uniform_scales(n: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """s_i = exp(U(-ln r, ln r)): symmetric in log space, so s and 1/s are equally likely."""
    log_r = math.log(ratio)
    return torch.exp((torch.rand(n, generator=generator, dtype=F64) * 2 - 1) * log_r)


def head_transform(
    x: torch.Tensor,
    n_kv: int,
    group: int,
    head_dim: int,
    mats: torch.Tensor | None,
    perm: torch.Tensor | None,
    inverse: bool,
    columns: bool = False,
) -> torch.Tensor:
    """Apply per-KV-group orthogonal matrices and a KV-group permutation to the rows of ``x`` (or,
    with ``columns``, to its columns: ``head_transform(x, columns=True) == head_transform(x.T).T``,
    computed without transposing the matrix).

    Rows are laid out like HF's head split: query head i sits at rows [i*d_h, (i+1)*d_h) and reads
    KV head i // group (``repeat_kv``). Forward: the group-j block of every head becomes
    mats[j] @ block (columns: block @ mats[j]^T), then new group j' is old group perm[j'] (query heads
    travel with their KV head). Inverse undoes the permutation, then applies mats[j]^T.
    """
    h = x.reshape(x.shape[0], n_kv, group, head_dim) if columns else x.reshape(n_kv, group, head_dim, -1)
    axis = 1 if columns else 0
    if mats is not None:
        mats = mats.to(device=x.device, dtype=x.dtype)
        if inverse:
            mats = mats.transpose(1, 2)  # orthogonal: the inverse is the transpose
    if perm is not None:
        perm = perm.to(x.device)
    if not inverse:
        if mats is not None:
            h = _multiply_heads(h, mats, columns)
        if perm is not None:
            h = h.index_select(axis, perm)
    else:
        if perm is not None:
            h = h.index_select(axis, torch.argsort(perm))
        if mats is not None:
            h = _multiply_heads(h, mats, columns)
    return h.reshape(x.shape)


def _multiply_heads(h: torch.Tensor, mats: torch.Tensor, columns: bool) -> torch.Tensor:
    if columns:
        return torch.einsum("ojgb,jab->ojga", h, mats)  # block @ mats[j]^T
    return mats.unsqueeze(1) @ h  # one GEMM per KV group, the group axis broadcast; contiguous output


def unit_transform(
    x: torch.Tensor,
    perm: torch.Tensor | None,
    scale: torch.Tensor | None,
    power: int,
    inverse: bool,
    columns: bool = False,
) -> torch.Tensor:
    """Scale unit i by scale[i]**power, then reorder so new unit i' is old unit perm[i'] (or undo
    both). Units are the rows of ``x``, or its columns with ``columns``."""
    axis = 1 if columns else 0
    factor = None
    if scale is not None and power != 0:
        shape = [1] * x.dim()
        shape[axis] = -1
        factor = (scale.to(device=x.device, dtype=x.dtype) ** power).reshape(shape)
    if perm is not None:
        perm = perm.to(x.device)
    if not inverse:
        if factor is not None:
            x = x * factor
        if perm is not None:
            x = x.index_select(axis, perm)
    else:
        if perm is not None:
            x = x.index_select(axis, torch.argsort(perm))
        if factor is not None:
            x = x / factor
    return x
