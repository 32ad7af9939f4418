"""Aligning one model's coordinates to another's: what a curious client runs on the published copies.

Every copy is ``c_k = T_k(theta + eps_k)`` with T_k a secret, function-preserving change of
coordinates (per block: RoPE-plane rotations, V/O rotations, head and FFN permutations). The
transforms come from a public family (the adapters in ``mpu.reparam``), so two copies of one round differ by ``T_1 T_k^-1`` plus noise, and that relative transform can be
fitted from the weights alone:

- **FFN units**: each unit is a gate row, an up row and a down column. Cosine similarity of those
  (invariant to the optional up/down scaling, s_i > 0) matched by ``linear_sum_assignment``; then
  the relative scale of each matched unit by least squares on its up row and down column.
- **KV groups and QK**: for a KV group, its k rows and the q rows of its query heads are multiplied
  by one orthogonal matrix that commutes with RoPE: a 2x2 rotation in each rotate_half plane
  (i, i + r/2), and any orthogonal matrix on pass-through dims (partial rotary). Fitted by a closed
  form 2x2 Procrustes per plane, shared across the GQA group.
- **V/O**: an orthogonal d_h x d_h per KV group (plane rotation or Haar), fitted by orthogonal
  Procrustes on the v rows and the o columns of the group's query heads.
- **KV-group permutation**: every (group, group) pair is fitted; the pairing with the least total
  residual is chosen by ``linear_sum_assignment``.

A fitted component whose improvement over the identity is no more than fitting noise would give
(a few times parameters / data points) is replaced by the identity, so copies that were not
reparameterised are averaged exactly as they are.

The fitted relative transform is expressed as a ``LayerTransform`` and applied with the adapter's
own ``apply``: the same public code that made the copies.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from mpu.errors import MPUError, UnsupportedArchitectureError
from mpu.reparam import LayerTransform, ReparamConfig, get_adapter
from mpu.reparam import maths
from mpu.reparam.decoder import DecoderAdapter

F64 = torch.float64
# A fitted component is kept only if it lowers the residual by more than this many times what
# fitting pure noise with as many parameters would (relative reduction ~ parameters / data).
SNAP_FACTOR = 4.0


@dataclass
class LayerAlignment:
    """The fitted map from one model's coordinates (``other``) to another's (``ref``) for one layer."""

    transform: LayerTransform
    residual_before: float  # ||other - ref|| / ||ref|| over the layer's tensors, before alignment
    residual_after: float  # the same after applying ``transform`` to ``other``
    snapped: dict[str, int] = field(default_factory=dict)  # components replaced by the identity

    def summary(self) -> dict:
        """JSON-ready: the residuals before/after (relative, unitless), the components snapped to the
        identity, and, where fitted, the KV permutation, the FFN permutation's fraction of fixed points
        and the RMS of the FFN log-scales."""
        t = self.transform
        out = {"residual_before": self.residual_before, "residual_after": self.residual_after, "snapped_to_identity": dict(self.snapped)}
        if t.kv_perm is not None:
            out["kv_perm"] = t.kv_perm.tolist()
        if t.ffn_perm is not None:
            out["ffn_perm_fixed_points"] = float((t.ffn_perm == torch.arange(len(t.ffn_perm))).double().mean())
        if t.ffn_scale is not None:
            out["ffn_log_scale_rms"] = float(torch.log(t.ffn_scale).square().mean().sqrt())
        return out


class Aligner:
    """Fits and applies relative transforms between two sets of one layer's tensors."""

    def __init__(self, config):
        try:
            adapter = get_adapter(config, ReparamConfig())
        except UnsupportedArchitectureError as err:
            raise MPUError(f"alignment is not available for this architecture: {err}") from None
        if not isinstance(adapter, DecoderAdapter):
            raise MPUError(f"alignment is not available for adapter {type(adapter).__name__}")
        self.adapter: DecoderAdapter = adapter
        self.geometry = adapter.geometry

    # Views -----------------------------------------------------------------------------------

    def role_matrices(self, layer: int, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each role's rows as one matrix (rows x features): q, k, v rows, o columns (as rows of
        o^T), gate and up rows, down columns; biases append as a column of their rows."""
        pieces: dict[str, list[torch.Tensor]] = {}
        for name in sorted(tensors):
            rule = self.adapter.rules.get(self.adapter.block_suffix(name)) if self.adapter.layer_of(name) == layer else None
            if rule is None:
                continue
            x = tensors[name].to(F64)
            if rule.rows:
                chunks = torch.split(x, [role.size for role in rule.rows], dim=0)
                for role, chunk in zip(rule.rows, chunks):
                    pieces.setdefault(role.label, []).append(chunk.reshape(chunk.shape[0], -1))
            if rule.cols is not None:
                pieces.setdefault(rule.cols.label, []).append(x.T)
        return {label: torch.cat(chunks, dim=1) for label, chunks in pieces.items()}

    def apply(self, transform: LayerTransform, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``transform`` on each of one layer's tensors (name -> tensor; shapes and dtypes kept), through
        the architecture's adapter: maps ``other``'s coordinates to ``ref``'s for a fitted alignment."""
        return {name: self.adapter.apply(transform, name, tensor) for name, tensor in tensors.items()}

    # Fitting ---------------------------------------------------------------------------------

    def fit(self, layer: int, ref: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> LayerAlignment:
        """The relative transform U (a LayerTransform) with U(other) ~ ref."""
        ref_roles, other_roles = self.role_matrices(layer, ref), self.role_matrices(layer, other)
        snapped: dict[str, int] = {}
        kv_perm, qk, vo = self._fit_heads(ref_roles, other_roles, snapped)
        ffn_perm, ffn_scale = self._fit_ffn(ref_roles, other_roles, snapped)
        transform = LayerTransform(layer, qk=qk, vo=vo, kv_perm=kv_perm, ffn_perm=ffn_perm, ffn_scale=ffn_scale)
        aligned = self.apply(transform, other)
        return LayerAlignment(transform, _relative(other, ref), _relative(aligned, ref), snapped)

    def _fit_heads(self, ref: dict, other: dict, snapped: dict):
        g = self.geometry
        if "q" not in ref or "k" not in ref:
            return None, None, None
        qk_ref, qk_other = self._group_data(ref, ("k", "q")), self._group_data(other, ("k", "q"))
        has_vo = "v" in ref and "o" in ref
        vo_ref = self._group_data(ref, ("v", "o")) if has_vo else None
        vo_other = self._group_data(other, ("v", "o")) if has_vo else None
        n = g.n_kv
        cost = np.zeros((n, n))
        fits: dict[tuple[int, int], tuple] = {}
        for a in range(n):
            for b in range(n):
                qk_mat, qk_res = fit_rope_orthogonal(qk_other[b], qk_ref[a], g.rotary_dim)
                vo_mat, vo_res = fit_orthogonal(vo_other[b], vo_ref[a]) if has_vo else (None, 0.0)
                scale = _sq(qk_ref[a]) + (_sq(vo_ref[a]) if has_vo else 0.0)
                cost[a, b] = (qk_res + vo_res) / max(scale, 1e-300)
                fits[a, b] = (qk_mat, qk_res, vo_mat, vo_res)
        rows, cols = linear_sum_assignment(cost)
        perm = torch.as_tensor(cols[np.argsort(rows)], dtype=torch.long)  # ref group a <- other group perm[a]
        eye = torch.eye(g.head_dim, dtype=F64)
        qk = eye.repeat(n, 1, 1)
        vo = eye.repeat(n, 1, 1)
        n_pass = g.head_dim - g.rotary_dim
        qk_params = g.rotary_dim // 2 + n_pass * (n_pass - 1) // 2
        vo_params = g.head_dim * (g.head_dim - 1) // 2
        for a in range(n):
            b = int(perm[a])
            qk_mat, qk_res, vo_mat, vo_res = fits[a, b]
            # Snap to the identity when the fit is no better than fitting noise would be.
            if a == b and _is_noise_fit(_sq(qk_other[b] - qk_ref[a]), qk_res, qk_params, qk_ref[a].numel()):
                snapped["qk"] = snapped.get("qk", 0) + 1
            else:
                qk[b] = qk_mat
            if has_vo:
                if a == b and _is_noise_fit(_sq(vo_other[b] - vo_ref[a]), vo_res, vo_params, vo_ref[a].numel()):
                    snapped["vo"] = snapped.get("vo", 0) + 1
                else:
                    vo[b] = vo_mat
        return perm, qk, (vo if has_vo else None)

    def _group_data(self, roles: dict, labels: tuple[str, ...]) -> list[torch.Tensor]:
        """Per KV group, the d_h x features matrix of every head row block that the group's
        matrix multiplies (k and its query heads' q; or v and its query heads' o columns)."""
        g = self.geometry
        per_group = [[] for _ in range(g.n_kv)]
        for label in labels:
            x = roles[label]
            heads = x.shape[0] // g.head_dim
            h = x.reshape(g.n_kv, heads // g.n_kv, g.head_dim, -1)
            for j in range(g.n_kv):
                per_group[j].append(h[j].permute(1, 0, 2).reshape(g.head_dim, -1))
        return [torch.cat(chunks, dim=1) for chunks in per_group]

    def _fit_ffn(self, ref: dict, other: dict, snapped: dict):
        if "up" not in ref or "down" not in ref:
            return None, None
        labels = [label for label in ("gate", "up", "down") if label in ref]
        similarity = sum(_cosine(ref[label], other[label]) for label in labels)
        rows, cols = linear_sum_assignment(similarity.numpy(), maximize=True)
        perm = torch.as_tensor(cols[np.argsort(rows)], dtype=torch.long)  # ref unit i <- other unit perm[i]
        up_o, down_o = other["up"][perm], other["down"][perm]
        up_r, down_r = ref["up"], ref["down"]
        # Relative scale r_i: other's up row * r ~ ref's up row, other's down column / r ~ ref's.
        r_up = (up_o * up_r).sum(1) / up_o.square().sum(1).clamp_min(1e-300)
        r_down = down_o.square().sum(1) / (down_o * down_r).sum(1)
        ok = (r_up > 0) & (r_down > 0) & torch.isfinite(r_down)
        r = torch.where(ok, torch.sqrt(r_up.abs() * r_down.abs()), torch.where(r_up > 0, r_up, torch.ones_like(r_up)))
        before = _sq(up_o - up_r) + _sq(down_o - down_r)
        after = _sq(up_o * r[:, None] - up_r) + _sq(down_o / r[:, None] - down_r)
        data = up_r.numel() + down_r.numel()
        scale = torch.empty_like(r)
        if _is_noise_fit(before, after, len(r), data):
            snapped["ffn_scale"] = 1
            scale = None
        else:
            scale[perm] = r  # indexed by the other model's unit, as LayerTransform.ffn_scale is
        return perm, scale


# Closed-form fits ------------------------------------------------------------------------------


def fit_rope_orthogonal(other: torch.Tensor, ref: torch.Tensor, rotary_dim: int) -> tuple[torch.Tensor, float]:
    """The orthogonal M that commutes with RoPE minimising ||M other - ref||_F, and that residual.

    On the rotary dims M is a 2x2 rotation in each plane (p, p + r/2): with N = other_p ref_p^T,
    the best angle is atan2(N01 - N10, N00 + N11). Pass-through dims get a general orthogonal fit.
    """
    d = other.shape[0]
    half = rotary_dim // 2
    p = torch.arange(half)
    x0, x1 = other[p], other[p + half]
    y0, y1 = ref[p], ref[p + half]
    n00, n01 = (x0 * y0).sum(1), (x0 * y1).sum(1)
    n10, n11 = (x1 * y0).sum(1), (x1 * y1).sum(1)
    angles = torch.atan2(n01 - n10, n00 + n11)
    matrix = maths.rope_plane_rotation(angles[None], d)[0]
    if rotary_dim < d:
        matrix[rotary_dim:, rotary_dim:], _ = fit_orthogonal(other[rotary_dim:], ref[rotary_dim:])
    return matrix, _sq(matrix @ other - ref)


def fit_orthogonal(other: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Orthogonal Procrustes: the orthogonal M minimising ||M other - ref||_F (= U V^T for the SVD
    ref other^T = U S V^T), and that residual."""
    u, _, vh = torch.linalg.svd(ref @ other.T)
    matrix = u @ vh
    return matrix, _sq(matrix @ other - ref)


def rope_angles(matrix: torch.Tensor, rotary_dim: int) -> torch.Tensor:
    """The plane angles of a RoPE-plane rotation (inverse of ``maths.rope_plane_rotation``)."""
    half = rotary_dim // 2
    p = torch.arange(half)
    return torch.atan2(matrix[..., p + half, p], matrix[..., p, p])


# Helpers -----------------------------------------------------------------------------------------


def _sq(x: torch.Tensor) -> float:
    return float(x.to(F64).square().sum())


def _relative(x: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> float:
    num = sum(_sq(x[name].to(F64) - ref[name].to(F64)) for name in ref)
    den = sum(_sq(ref[name]) for name in ref)
    return (num / den) ** 0.5 if den else 0.0


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a / a.norm(dim=1, keepdim=True).clamp_min(1e-300)
    b = b / b.norm(dim=1, keepdim=True).clamp_min(1e-300)
    return a @ b.T


def _is_noise_fit(identity_residual: float, fitted_residual: float, params: int, data: int) -> bool:
    """True when a fit with ``params`` parameters improves on the identity no more than fitting
    noise would: the relative improvement expected from noise alone is about params / data."""
    gain = identity_residual - fitted_residual
    return gain <= SNAP_FACTOR * params / max(data, 1) * max(fitted_residual, 0.0) + 1e-12 * max(identity_residual, 1e-300)
