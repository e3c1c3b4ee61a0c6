"""SimSiam: the stop-gradient on the target branch, the projections enter the loss only as targets while the
predictions, and through them the projection and backbone, get a gradient."""

from __future__ import annotations

from image_ssl_recipes import image_objective


def test_simsiam_stops_the_gradient_of_the_target_branch(tmp_path):
    from mmssl.losses import symmetric_negative_cosine

    obj = image_objective(tmp_path, "simsiam", eval_before=False)
    module = obj.module
    batch = obj.prepare_batch(obj.collate(list(range(8))))
    p1, p2, z1, z2 = module(batch["view1"], batch["view2"])
    for t in (p1, p2, z1, z2):
        t.retain_grad()
    symmetric_negative_cosine(p1, p2, z1, z2).backward()
    # the projections z enter the loss only as (stopped) targets: no gradient reaches them that way, while the
    # predictions p, and through them the projection and backbone, get one
    assert z1.grad is None and z2.grad is None
    assert p1.grad is not None and p1.grad.abs().sum() > 0
    assert all(q.grad is not None for q in module.projection.parameters())
    assert all(q.grad is not None for q in module.backbone.parameters() if q.requires_grad)
