"""The audit's readable table."""

from __future__ import annotations


def _fmt(value, width: int = 11, pct: bool = False) -> str:
    if value is None:
        return f"{'-':>{width}}"
    if pct:
        return f"{value:>{width}.1%}"
    return f"{value:>{width}.3g}"


def _get(entry: dict, metric: str, view: str):
    block = entry.get(metric) or {}
    return (block.get(view) or {}).get("overall")


def format_table(report: dict) -> str:
    """One row per attack: relative errors (full weights and task vector; raw, after aligning to the
    public base, after the scorer's alignment to theta), the ratio to a single copy, logit agreement."""
    lines = [
        f"MPU audit of round {report['round']} ({len(report['copies'])} copies, {report.get('architecture')}, {report.get('dtype')})",
        _alphas_line(report),
    ]
    alignment = report.get("alignment", {})
    if alignment.get("available"):
        for copy, entry in alignment.get("per_copy", {}).items():
            agree = entry.get("agreement_with_scorer") or {}
            extra = ""
            if agree:
                extra = f"; matches agreeing with the scorer's: FFN {_pct(agree.get('ffn_units'))}, KV groups {_pct(agree.get('kv_groups'))}"
            lines.append(f"alignment copy {copy} -> copy {alignment.get('anchor_copy', alignment.get('reference_copy'))}: relative misfit "
                         f"{entry.get('residual_before', float('nan')):.3g} -> {entry.get('residual_after', float('nan')):.3g}{extra}")
    else:
        lines.append(f"alignment: not available ({alignment.get('note')})")
    if not report.get("scored"):
        lines.append("no --true-weights given: the attacks ran, nothing is scored (recovered weights' errors need theta)")
        return "\n".join(lines)
    single = report["attacks"]["single-copy"]
    has_task = single.get("task_vector_error") is not None
    metric = "task_vector_error" if has_task else "weights_error"
    single_err = _get(single, metric, "scored")
    header = (f"{'attack':<28}{'W raw':>11}{'W scored':>11}" + (f"{'TV raw':>11}{'TV base':>11}{'TV scored':>11}" if has_task else "")
              + f"{'/ 1 copy':>10}{'top-1':>9}{'mean KL':>11}")
    lines += ["", "W = ||recovered - theta|| / ||theta||; TV = ||recovered - theta|| / ||theta - theta_base||",
              "raw: as recovered; base: after aligning to the public base (client-side); scored: after aligning to theta (scorer)",
              header, "-" * len(header)]
    for name, entry in report["attacks"].items():
        err = _get(entry, metric, "scored")
        row = f"{name:<28}{_fmt(_get(entry, 'weights_error', 'raw'))}{_fmt(_get(entry, 'weights_error', 'scored'))}"
        if has_task:
            row += f"{_fmt(_get(entry, metric, 'raw'))}{_fmt(_get(entry, metric, 'base_aligned'))}{_fmt(err)}"
        ratio = err / single_err if (err is not None and single_err) else None
        row += f"{_fmt(ratio, 10)}{_fmt(entry['logits']['top1_agreement'], 9, pct=True)}{_fmt(entry['logits']['mean_kl'])}"
        lines.append(row)
    summary = report.get("summary", {})
    if summary:
        ratio = summary["best_over_single_copy"]
        ratio = f"{ratio:.3g} x a single copy's" if ratio is not None else "a single copy's is 0 (no noise)"
        lines += ["", f"best client attack: {summary['best_attack']}: {summary['metric']} {summary['best_error']:.3g}, "
                      f"{ratio}; top-1 agreement {summary['best_top1_agreement']:.1%}"]
    return "\n".join(lines)


def _pct(value) -> str:
    return "-" if value is None else f"{value:.1%}"


def _alphas_line(report: dict) -> str:
    alphas = report["alphas"]
    # public_schedule: reference_schedule in reports written before the rename
    parts = [f"public schedule {_list(alphas.get('public_schedule', alphas.get('reference_schedule')))}"]
    for key, label in (("estimated_unaligned", "estimated (unaligned)"), ("estimated_aligned", "estimated (aligned)")):
        entry = alphas.get(key)
        if entry:
            parts.append(f"{label} {_list(entry['alphas']) if entry['alphas'] else entry.get('note')}")
    if alphas.get("oracle"):
        parts.append(f"true {_list(alphas['oracle']['alphas'])}, tau {alphas['oracle']['tau']:g}")
    return "alphas: " + "; ".join(parts)


def _list(values) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in values) + "]"
