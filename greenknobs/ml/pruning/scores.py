"""Layer-importance scores: block influence, angular distance, and loss/metric objectives.

Convention: for block scores, LOWER means "less important, remove first". Objectives return
a score where HIGHER is better (negative loss, negative perplexity, macro-F1).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from greenknobs.errors import KnobError
from greenknobs.ml import metrics
from greenknobs.ml.layers import find_layer_stack, skipping_layers
from greenknobs.ml.pruning.calibration import Calibration, LayerStats, first_tensor, mean_pool, run_model


def block_influence(stats: LayerStats) -> list[float]:
    """ShortGPT: BI_i = 1 - mean_tokens cos(h_i, h_{i+1})."""
    return (1.0 - stats.cos_mean).tolist()


def angular_distances(stats: LayerStats, n: int) -> list[float]:
    """Gromov et al.: d(l, n) = arccos(cos(h_l, h_{l+n})) / pi on the last token, mean over sequences,
    for every start l = 0..L-n."""
    L = stats.last.shape[0] - 1
    out = []
    for start in range(L - n + 1):
        cos = torch.nn.functional.cosine_similarity(stats.last[start], stats.last[start + n], dim=-1)
        out.append(float((torch.arccos(cos.clamp(-1.0, 1.0)) / math.pi).mean()))
    return out


def task_of(model: nn.Module) -> str:
    """'causal_lm' when the model has an output vocabulary head, else 'classification'."""
    head = getattr(model, "get_output_embeddings", None)
    return "causal_lm" if head is not None and head() is not None else "classification"


@contextmanager
def final_block_output(model: nn.Module) -> Iterator[list[torch.Tensor | None]]:
    """Capture the last block's output (after any other hooks on it, e.g. a layer mask)."""
    _, _, stack = find_layer_stack(model)
    box: list[torch.Tensor | None] = [None]
    handle = stack[-1].register_forward_hook(lambda m, a, out: box.__setitem__(0, first_tensor(out)))
    try:
        yield box
    finally:
        handle.remove()


def lm_loss(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    labels = ids.masked_fill(mask == 0, -100)
    return run_model(model, ids, mask, labels=labels.to(next(model.parameters()).device)).loss


def pooled(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean-pooled final block output: what a classifier head (or a probe) reads."""
    with final_block_output(model) as box:
        run_model(model, ids, mask)
    return mean_pool(box[0], mask)


class CentroidProbe:
    """Nearest-centroid probe on pooled representations.

    A freshly loaded classifier has a random head, so its logits say nothing about a layer's
    worth; instead we ask how well the pruned encoder's representation still separates the
    classes: class centroids are fitted on labelled calibration data, logits are
    ``scale * cos(x, centroid_k)``.
    """

    scale = 10.0

    def __init__(self, reps: torch.Tensor, labels: torch.Tensor, n_classes: int | None = None):
        k = int(n_classes or int(labels.max()) + 1)
        dim = reps.shape[1]
        self.centroids = torch.stack([reps[labels == c].mean(0) if (labels == c).any() else torch.zeros(dim)
                                      for c in range(k)])

    def logits(self, reps: torch.Tensor) -> torch.Tensor:
        return self.scale * torch.nn.functional.cosine_similarity(reps.unsqueeze(1), self.centroids.unsqueeze(0), dim=-1)


class Objective:
    """How much quality a model state keeps on calibration (``kind='loss'``) or dev (``kind='metric'``).

    causal LM:      loss = mean token cross-entropy on calibration; metric = -perplexity on dev
    classification: loss = centroid-probe cross-entropy on calibration (centroids refitted on the
                    scored model); metric = centroid-probe macro-F1 on dev (centroids from calibration)
    """

    def __init__(self, kind: str, task: str, calibration: Calibration, dev: Calibration | None = None):
        if kind not in ("loss", "metric"):
            raise ValueError(kind)
        if kind == "metric" and dev is None:
            raise KnobError("the task-metric pruning method needs a dev set (the validation split is empty)")
        if task == "classification" and (calibration.labels is None or (kind == "metric" and dev is not None and dev.labels is None)):
            raise KnobError("pruning a classifier by loss or metric needs labelled calibration data")
        self.kind, self.task, self.calibration, self.dev = kind, task, calibration, dev
        self.name = {"causal_lm": {"loss": "-calibration_loss", "metric": "-dev_perplexity"},
                     "classification": {"loss": "-probe_loss", "metric": "probe_macro_f1"}}[task][kind]

    @torch.no_grad()
    def score(self, model: nn.Module) -> float:
        was_training = model.training
        model.eval()
        try:
            if self.task == "causal_lm":
                data = self.calibration if self.kind == "loss" else self.dev
                assert data is not None
                loss = _mean_lm_loss(model, data)
                return -loss if self.kind == "loss" else -math.exp(min(loss, 50.0))
            reps = torch.cat([pooled(model, ids, m).float() for ids, m in self.calibration.batches])
            assert self.calibration.labels is not None
            labels = torch.cat(self.calibration.labels)
            probe = CentroidProbe(reps, labels)
            if self.kind == "loss":
                return -float(torch.nn.functional.cross_entropy(probe.logits(reps), labels))
            assert self.dev is not None and self.dev.labels is not None
            dev_reps = torch.cat([pooled(model, ids, m).float() for ids, m in self.dev.batches])
            pred = probe.logits(dev_reps).argmax(-1).tolist()
            return metrics.macro_f1(torch.cat(self.dev.labels).tolist(), pred)
        finally:
            model.train(was_training)


def _mean_lm_loss(model: nn.Module, data: Calibration) -> float:
    total, tokens = 0.0, 0
    for ids, mask in data.batches:
        n = int(mask[:, 1:].sum())  # predicted tokens
        total += float(lm_loss(model, ids, mask)) * n
        tokens += n
    return total / max(tokens, 1)


def score_removals(model: nn.Module, objective: Objective) -> list[float]:
    """SLEB / Moslem et al.: the objective with each block skipped in turn (higher = cheaper to remove)."""
    n = len(find_layer_stack(model)[2])
    out = []
    for i in range(n):
        with skipping_layers(model, {i}):
            out.append(objective.score(model))
    return out
