"""Which training rows keep their label when only a fraction of the labels is used (1 %, 10 %, 100 %).

Shared by everything that learns from a few labels (SupCon on part of the data, `mmssl finetune`,
semi-supervised methods), so that "10 % of the labels" means the same rows everywhere for one seed:
the choice is stratified (the same fraction of every class, rounded), drawn with a seed, and nested (the rows
of 1 % are among the rows of 10 %), so a label-efficiency curve compares like with like.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mmssl.errors import DataError


def labelled_rows(labels: torch.Tensor, fraction: float, seed: int,
                  class_names: Sequence[str] | None = None) -> torch.Tensor:
    """A bool mask over `labels` (class indices, -1 for unlabelled rows): the rows whose label is kept.

    Every class keeps ``fraction * n_c`` (rounded half up) of its ``n_c`` labelled rows, chosen by a permutation seeded
    from `seed` and the class alone (nested across fractions). Raises `DataError` when there are no labels at
    all or when the fraction would leave a class without any labelled row (it names the class and the smallest
    fraction that keeps one)."""
    if not 0.0 < fraction <= 1.0:
        raise DataError(f"label fraction {fraction} must be in (0, 1], e.g. 0.01 for 1 % of the labels")
    labels = torch.as_tensor(labels).long()
    keep = torch.zeros(labels.shape[0], dtype=torch.bool)
    present = sorted(int(c) for c in labels[labels >= 0].unique())
    if not present:
        raise DataError("the training data has no labels: give a label column (data.columns.label) with a class "
                        "for at least some rows")
    empty = []
    for c in present:
        rows = (labels == c).nonzero().flatten()
        k = int(fraction * rows.numel() + 0.5)  # half up: 0.5 of a row keeps one
        if k == 0:
            empty.append((c, rows.numel()))
            continue
        order = torch.randperm(rows.numel(), generator=torch.Generator().manual_seed(seed * 1_000_003 + c))
        keep[rows[order[:k]]] = True
    if empty:
        name = (lambda c: repr(class_names[c]) if class_names is not None and c < len(class_names) else str(c))
        smallest = min(n for _, n in empty)
        raise DataError(
            f"label fraction {fraction} leaves class(es) {', '.join(name(c) for c, _ in empty)} without a labelled "
            f"example (the smallest has {smallest} labelled rows); use a fraction of at least {0.5 / smallest:.3g} "
            "or more labelled data")
    return keep
