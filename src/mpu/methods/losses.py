"""The loss maths every method shares, in one place.

Conventions (all functions):
- ``logits`` is ``[B, T, V]`` as returned by a causal LM, ``labels`` is ``[B, T]`` aligned with the inputs,
  ``-100`` everywhere except the answer tokens (see :func:`mpu.data.qa.encode_qa`). Position ``t`` of the
  logits predicts token ``t + 1``, so every function shifts once, here.
- Arithmetic is in float32 whatever the model's dtype.
- The losses are sums over a batch's answer tokens (``*_sum``) or one value per sequence (``*_terms``,
  ``[B]``), never means: the trainer sums them over a micro-batch and divides by the number of answer
  tokens (every answer token of the step: the Hugging Face convention) or sequences of the whole
  optimizer step (all micro-batches, all processes), so that gradient accumulation and several processes
  give the update of one full batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mpu.data.qa import IGNORE_INDEX


def _shift(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    logits = logits[:, :-1, :].float()
    labels = labels[:, 1:].to(logits.device)
    return logits, labels, labels != IGNORE_INDEX


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Negative log-likelihood of each answer token, ``[B, T-1]`` (0 off the answer), and the answer mask."""
    logits, labels, mask = _shift(logits, labels)
    nll = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    ).view(labels.shape)
    return nll, mask


def sequence_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed answer NLL of each sequence, ``[B]`` (= minus the answer's log-probability)."""
    return token_nll(logits, labels)[0].sum(-1)


def answer_lengths(labels: torch.Tensor) -> torch.Tensor:
    """Number of answer tokens of each sequence, ``[B]``."""
    return (labels[:, 1:] != IGNORE_INDEX).sum(-1)


def answer_tokens(labels: torch.Tensor) -> torch.Tensor:
    """Number of answer tokens (predicted positions) of the whole batch, a 0-d tensor."""
    return answer_lengths(labels).sum()


def nll_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """NLL summed over every answer token of the batch."""
    return token_nll(logits, labels)[0].sum()


def kl_sum(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KL(p_ref || p_θ) of the next-token distributions, summed over answer positions."""
    logits, _, mask = _shift(logits, labels)
    ref = ref_logits[:, :-1, :].float().to(logits.device)
    log_p = F.log_softmax(logits[mask], dim=-1)
    log_q = F.log_softmax(ref[mask], dim=-1)
    return F.kl_div(log_p, log_q, reduction="sum", log_target=True)


def npo_terms(nll: torch.Tensor, ref_nll: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO per sequence, ``[B]``: −(2/β)·log σ(β(ℓ_θ − ℓ_ref)) with ℓ the summed answer NLL."""
    return -(2.0 / beta) * F.logsigmoid(beta * (nll - ref_nll))


def dpo_terms(
    win_nll: torch.Tensor, win_ref_nll: torch.Tensor, lose_nll: torch.Tensor, lose_ref_nll: torch.Tensor, beta: float
) -> torch.Tensor:
    """DPO per pair, ``[B]``: −(2/β)·log σ(β[(log π_w − log π_ref,w) − (log π_l − log π_ref,l)]), log π = −ℓ."""
    win_log_ratio = win_ref_nll - win_nll
    lose_log_ratio = lose_ref_nll - lose_nll
    return -(2.0 / beta) * F.logsigmoid(beta * (win_log_ratio - lose_log_ratio))


def simnpo_terms(nll: torch.Tensor, lengths: torch.Tensor, beta: float, delta: float) -> torch.Tensor:
    """SimNPO per sequence, ``[B]``: −(2/β)·log σ(β(ℓ_θ/|y| − δ)), no reference model."""
    return -(2.0 / beta) * F.logsigmoid(beta * (nll / lengths.clamp(min=1) - delta))


def weighted_ascent_sum(logits: torch.Tensor, labels: torch.Tensor, beta1: float, beta2: float = 0.0) -> torch.Tensor:
    """−Σ over answer tokens of w·CE with w = p^β1 (1 − p)^β2, p = the token's probability (w detached).

    WGA is ``beta2 = 0``; SatImp uses both exponents.
    """
    nll, mask = token_nll(logits, labels)
    p = torch.exp(-nll).detach()
    weight = p.pow(beta1) * (1.0 - p).pow(beta2)
    return -(weight * nll)[mask].sum()


def undial_sum(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor, beta: float) -> torch.Tensor:
    """Cross-entropy to softmax(ref logits − β·onehot(label)), summed over answer tokens."""
    logits, labels, mask = _shift(logits, labels)
    ref = ref_logits[:, :-1, :].float().to(logits.device)[mask]
    target = F.softmax(ref - beta * F.one_hot(labels[mask], ref.size(-1)), dim=-1)
    return -(target * F.log_softmax(logits[mask], dim=-1)).sum()


def ceu_labels(labels: torch.Tensor, ignore_first_n: int = 1) -> torch.Tensor:
    """``labels`` with the first ``ignore_first_n`` answer tokens of each sequence set to -100 (CE-U's
    footnote trick, arXiv:2503.01224): the tokens CE-U trains on, and therefore counts."""
    answer = labels != IGNORE_INDEX
    return labels.masked_fill(answer & (answer.cumsum(-1) <= ignore_first_n), IGNORE_INDEX)


def ceu_sum(logits: torch.Tensor, labels: torch.Tensor, ignore_first_n: int = 1) -> torch.Tensor:
    """CE-U summed over the trained answer tokens: cross-entropy to the model's own (detached)
    distribution with the true token's logit at −∞. The first ``ignore_first_n`` answer tokens of each
    sequence are skipped (:func:`ceu_labels`)."""
    logits, labels, mask = _shift(logits, ceu_labels(labels, ignore_first_n))
    if not mask.any():  # every answer is shorter than ignore_first_n: nothing to unlearn in this batch
        return logits.sum() * 0.0
    selected = logits[mask]
    target = selected.detach().scatter(-1, labels[mask].unsqueeze(-1), float("-inf"))
    return -(F.softmax(target, dim=-1) * F.log_softmax(selected, dim=-1)).sum()


def flatten_logits_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Σ over answer positions of (max logit − mean logit)²: pushes the prediction towards uniform (PDU)."""
    logits, _, mask = _shift(logits, labels)
    selected = logits[mask]
    return ((selected.max(-1).values - selected.mean(-1)) ** 2).sum()


def activation_mse_terms(activations: torch.Tensor, target: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """RMU's distance per sequence, ``[B]``: per token the mean squared difference over hidden units,
    averaged over the sequence's answer tokens. ``target`` broadcasts against ``activations``."""
    mask = (labels != IGNORE_INDEX).to(activations.device)
    per_token = (activations.float() - target.float()).pow(2).mean(-1)
    return (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)
