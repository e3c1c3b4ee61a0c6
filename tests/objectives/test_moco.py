"""MoCo v2: the queue fills with the keys of each step (both views of the batch) and lives in the module's state
next to the momentum key encoder."""

from __future__ import annotations

from image_ssl_recipes import image_objective


def test_moco_v2_queue_fills_with_the_keys_of_each_step(tmp_path):
    obj = image_objective(tmp_path, "moco", variant="v2", queue_size=32, eval_before=False)
    module = obj.module
    for start in (0, 8, 16):
        batch = obj.prepare_batch(obj.collate(list(range(start, start + 8))))
        obj.forward(module, batch)["loss"].backward()
    # first step: its keys seed the queue (16 = both views of 8 images), then each step adds 16 more
    assert len(module.queue) == 32
    state = module.state_dict()
    assert {"queue.queue", "queue.ptr", "queue.filled"} <= set(state) and any(k.startswith("key_backbone.") for k in state)
