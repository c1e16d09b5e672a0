"""The intra-class contrastive loss of ICCKD and its margin mechanism.

Reference: Yuan, Xu, Geng, Rui, "Enriching Knowledge Distillation with Intra-Class
Contrastive Learning", arXiv 2509.22053 (2025). The exact form below is reconstructed
from the paper's description (see METHODS.md, section 1): InfoNCE whose positive is the
other augmented view of the same image and whose negatives are *other images of the same
class*, from the batch (both views) and from a cache of earlier batches.
"""

from keras import ops

from keras_icckd.losses.margin import MARGIN_MODES
from keras_icckd.losses.margin import logit_margin
from keras_icckd.losses.margin import probability_margin

_MASKED = -1e9


def intra_class_contrastive(anchors, positives, labels, bank=None, bank_labels=None, tau=0.1):
    """Per-anchor intra-class InfoNCE.

    l_i = -log( exp(a_i.p_i / tau) / (exp(a_i.p_i / tau) + sum_{k in N(i)} exp(a_i.n_k / tau)) )

    where N(i) holds every candidate with the label of anchor i that is not image i itself:
    the anchors and positives of the other images in the batch, and the bank (cache) entries
    with that label. Bank entries whose label is negative are empty slots and never match.
    l_i = 0 when N(i) is empty. Inputs are expected L2-normalised; bank entries are treated
    as constants (no gradient).

    Args:
        anchors: (B, D) projections of the first view.
        positives: (B, D) projections of the second view of the same images.
        labels: (B,) integer labels.
        bank: optional (Q, D) earlier projections.
        bank_labels: (Q,) their labels, negative for empty slots.
        tau: temperature.

    Returns:
        (loss, num_negatives): two (B,) float32 tensors.
    """
    anchors = ops.cast(anchors, "float32")
    positives = ops.cast(positives, "float32")
    labels = ops.cast(labels, "int32")
    batch = ops.shape(anchors)[0]
    candidates = ops.concatenate([anchors, positives], axis=0)
    cand_labels = ops.concatenate([labels, labels], axis=0)
    ids = ops.arange(batch, dtype="int32")
    cand_ids = ops.concatenate([ids, ids], axis=0)
    mask = ops.logical_and(
        ops.equal(labels[:, None], cand_labels[None, :]),
        ops.not_equal(ids[:, None], cand_ids[None, :]),
    )
    if bank is not None and bank.shape[0]:
        bank = ops.stop_gradient(ops.cast(bank, "float32"))
        candidates = ops.concatenate([candidates, bank], axis=0)
        bank_mask = ops.equal(labels[:, None], ops.cast(bank_labels, "int32")[None, :])
        mask = ops.concatenate([mask, bank_mask], axis=1)
    positive_logit = ops.sum(anchors * positives, axis=-1) / tau
    negative_logits = ops.matmul(anchors, ops.transpose(candidates)) / tau
    negative_logits = ops.where(mask, negative_logits, _MASKED)
    all_logits = ops.concatenate([positive_logit[:, None], negative_logits], axis=1)
    loss = ops.logsumexp(all_logits, axis=1) - positive_logit
    num_negatives = ops.sum(ops.cast(mask, "float32"), axis=1)
    return loss, num_negatives


def intra_class_objective(
    per_anchor_loss, logits, labels, delta=0.5, margin_mode="gate"
):
    """Combines per-anchor intra-class losses under the margin mechanism.

    - "gate" (default): only anchors whose probability margin
      m_i = p_y - max_{j != y} p_j (no gradient) exceeds delta take part:
      L = sum_i [m_i > delta] l_i / max(1, sum_i [m_i > delta]).
    - "hinge": every anchor takes part, plus the classical hinge margin on logits
      mean_i max(0, delta - (z_y - max_{j != y} z_j)).
    - "none": L = mean_i l_i (the unstable variant, for ablations).

    Args:
        per_anchor_loss: (B,) from `intra_class_contrastive`.
        logits: (B, C) logits of the anchor view.
        labels: (B,) integer labels.
        delta: the margin threshold.
        margin_mode: one of "gate", "hinge", "none".

    Returns:
        (loss, gate): the scalar float32 loss and the (B,) float32 mask of anchors that
        took part (all ones for "hinge" and "none").
    """
    if margin_mode not in MARGIN_MODES:
        raise ValueError(f"margin_mode={margin_mode!r}; expected one of {MARGIN_MODES}")
    per_anchor_loss = ops.cast(per_anchor_loss, "float32")
    if margin_mode == "gate":
        gate = ops.cast(probability_margin(logits, labels) > delta, "float32")
        loss = ops.sum(gate * per_anchor_loss) / ops.maximum(1.0, ops.sum(gate))
        return loss, gate
    gate = ops.ones_like(per_anchor_loss)
    loss = ops.mean(per_anchor_loss)
    if margin_mode == "hinge":
        loss = loss + ops.mean(ops.relu(delta - logit_margin(logits, labels)))
    return loss, gate
