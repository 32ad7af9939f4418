"""Privacy audit: what a curious client can recover from one round's published copies.

    result = run_audit(outbox, true_weights=model_dir, base=base_dir)   # AuditResult
    print(format_table(result.report)); json.dump(result.report, ...)

``align`` fits the relative transforms between copies (FFN matching, RoPE-plane and V/O Procrustes,
KV-group matching); ``alphas`` estimates alpha from pairwise distances; ``attack`` runs and scores
the attacks; ``membership`` measures what the server learns about the forget set from the updates.
"""

from mpu.audit.align import Aligner, LayerAlignment, fit_orthogonal, fit_rope_orthogonal, rope_angles
from mpu.audit.alphas import estimate_alphas, harmonic_weights, optimal_weights
from mpu.audit.attack import AuditResult, public_alphas, run_audit
from mpu.audit.report import format_table

__all__ = [
    "Aligner",
    "AuditResult",
    "LayerAlignment",
    "estimate_alphas",
    "fit_orthogonal",
    "fit_rope_orthogonal",
    "format_table",
    "harmonic_weights",
    "optimal_weights",
    "public_alphas",
    "rope_angles",
    "run_audit",
]
