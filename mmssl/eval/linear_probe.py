"""Linear-probe accuracy of frozen features: multinomial logistic regression with weight decay.

Features are standardised with the train rows' mean and std. The objective is the mean cross-entropy
plus ``weight_decay / 2 * ||W||^2`` (the bias is not decayed), i.e. the same number means what it does
for ``torch.optim.SGD(weight_decay=...)`` on a mean loss. It is convex, smooth and, with weight decay,
strongly convex, so it is minimised full-batch with L-BFGS (strong-Wolfe line search) from zero weights:
no learning rate, batch size or epoch count to tune, the same answer on every run (the seed only picks the
validation split), and few iterations even at 50,000 x 2,048 (each one is two matrix products). This is
also scikit-learn's default solver and the probe of CLIP (Radford et al. 2021).

With several `weight_decays`, each is fitted on ``1 - val_fraction`` of the TRAIN rows and scored on the
rest (largest first, each warm-started from the previous one: a regularisation path); the best
validation accuracy wins (ties: the larger weight decay), and the probe is refitted on all train rows.
The test rows are used for nothing but the final score. Rows labelled ``-1`` are ignored.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mmssl.eval.knn import _labelled, _num_classes, _topk_accuracy

WEIGHT_DECAYS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)


@torch.inference_mode(False)
@torch.enable_grad()
def _fit(
    x: Tensor, y: Tensor, num_classes: int, weight_decay: float, max_iter: int, init: tuple[Tensor, Tensor] | None
) -> tuple[Tensor, Tensor, int]:
    """L-BFGS on mean cross-entropy + wd/2 ||W||^2; returns (W [D, C], b [C], iterations)."""
    w = torch.zeros(x.shape[1], num_classes, device=x.device) if init is None else init[0].clone()
    b = torch.zeros(num_classes, device=x.device) if init is None else init[1].clone()
    w.requires_grad_(True), b.requires_grad_(True)
    if x.is_inference() or y.is_inference():  # autograd cannot save tensors made in inference mode
        x, y = x.clone(), y.clone()
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=max_iter, history_size=10, tolerance_grad=1e-5, tolerance_change=1e-9,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(torch.addmm(b, x, w), y) + 0.5 * weight_decay * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    iterations = opt.state[w].get("n_iter", 0)  # LBFGS keeps its state on the first parameter
    return w.detach(), b.detach(), int(iterations)


def linear_probe_accuracy(
    train_features: Tensor,
    train_labels: Tensor | Sequence[int],
    test_features: Tensor,
    test_labels: Tensor | Sequence[int],
    weight_decays: Sequence[float] = WEIGHT_DECAYS,
    val_fraction: float = 0.2,
    max_iter: int = 100,
    num_classes: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Train a linear classifier on frozen train features, report its accuracy (see the module docstring).

    Returns ``linear_probe_top1`` (test), ``linear_probe_train_top1``, ``linear_probe_top5`` when there
    are more than 5 classes, ``linear_probe_weight_decay`` (the one used), ``linear_probe_val_top1`` (its
    validation accuracy, only when several were swept), ``linear_probe_iterations`` (L-BFGS iterations
    of the final fit), ``linear_probe_num_train`` and ``linear_probe_num_test``.
    """
    if not weight_decays or any(wd <= 0 for wd in weight_decays) or not 0 < val_fraction < 1 or max_iter < 1:
        raise ValueError("need weight decays > 0, 0 < val_fraction < 1 and max_iter >= 1")
    train, ytrain = _labelled(train_features.detach(), train_labels, "train")
    test, ytest = _labelled(test_features.detach(), test_labels, "test")
    if len(train) == 0 or len(test) == 0:
        raise ValueError("a linear probe needs labelled train and test rows")
    c = _num_classes(num_classes, ytrain, ytest)
    train = train.float()
    mean, std = train.mean(0), train.std(0, correction=0).clamp(min=1e-6)
    x = (train - mean) / std
    xt = (test.to(train.device).float() - mean) / std
    ytest = ytest.to(train.device)

    out: dict[str, float] = {}
    wds = sorted(set(weight_decays), reverse=True)
    chosen, init = wds[0], None
    if len(wds) > 1:
        n_val = int(round(len(x) * val_fraction))
        if not 1 <= n_val < len(x):
            raise ValueError(f"{len(x)} train rows are too few for a validation split of {val_fraction}")
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed)).to(x.device)
        fit, val = perm[n_val:], perm[:n_val]
        best = -1.0
        for wd in wds:
            w, b, _ = _fit(x[fit], ytrain[fit], c, wd, max_iter, init)
            init = (w, b)
            acc = (torch.addmm(b, x[val], w).argmax(1) == ytrain[val]).float().mean().item()
            if acc > best:
                best, chosen, best_init = acc, wd, init
        init = best_init
        out["linear_probe_val_top1"] = best
    w, b, iterations = _fit(x, ytrain, c, chosen, max_iter, init)
    out.update(_topk_accuracy(torch.addmm(b, xt, w), ytest, "linear_probe_"))
    out["linear_probe_train_top1"] = (torch.addmm(b, x, w).argmax(1) == ytrain).float().mean().item()
    out.update(
        linear_probe_weight_decay=float(chosen),
        linear_probe_iterations=float(iterations),
        linear_probe_num_train=float(len(x)),
        linear_probe_num_test=float(len(xt)),
    )
    return out
