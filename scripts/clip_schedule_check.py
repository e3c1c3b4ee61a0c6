"""Why mmssl's CLIP loss after 43 steps differs from open_clip's in scripts/bench_clip.py: one plain loop
over the same batches (no views), mmssl's objective and optimiser, with open_clip's `cosine_lr` (`plain`),
transformers' cosine schedule as mmssl's trainer uses (`hfsched`), or open_clip's schedule delayed by one
step (`shift`). Needs the bench data: first run scripts/bench_clip.py's `prepare` into /tmp/clipexp/work
(this script does it when missing).

    python scripts/clip_schedule_check.py plain; python scripts/clip_schedule_check.py hfsched
"""
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "scripts"))
WORK = Path("/tmp/clipexp/work")
if not (WORK / "train.csv").exists():
    import bench_clip
    WORK.mkdir(parents=True, exist_ok=True)
    bench_clip.prepare(WORK, 43 * 64, 64)
import torch, open_clip
from open_clip_train.scheduler import cosine_lr
from mmssl.recipes import parse_recipe
from mmssl.registry import get_objective
from mmssl.data.image_views import eval_view
from mmssl.train.optim import build_optimizer
torch.set_num_threads(2)
raw = {"name": "x", "output_dir": "/tmp/clipexp/w", "seed": 0,
       "data": {"source": "files", "path": "/tmp/clipexp/work/train.csv", "eval_fraction": 0.0},
       "model": {"pretrained": "/tmp/clipexp/work/init"}, "objective": {"name": "clip", "caption_sampling": "first"},
       "train": {"cpu": True, "learning_rate": 5e-4, "weight_decay": 0.2, "adam_betas": [0.9, 0.98], "adam_eps": 1e-6}}
recipe = parse_recipe(raw)
obj = get_objective("clip")(recipe); obj.setup()
from mmssl.train.loop import EpochShuffleSampler, step_seed
from transformers import get_scheduler
order = torch.tensor(list(EpochShuffleSampler(len(obj.train), 0)))
MODE = sys.argv[1]
batches = [order[i:i + 64] for i in range(0, 43 * 64, 64)]
def run(kind):
    if kind == "mmssl":
        module = obj.module; module.train()
        opt = build_optimizer(module, obj.param_groups(module), recipe.train)
        step_fn = lambda im, tx: obj.forward(module, {"image": im, "text": tx})["loss"]
    else:
        model, _, _ = open_clip.create_model_and_transforms("local-dir:/tmp/clipexp/work/init", precision="fp32", device="cpu")
        model.train(); lf = open_clip.ClipLoss()
        ex = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n
        ps = list(model.named_parameters())
        opt = torch.optim.AdamW([{"params": [p for n, p in ps if ex(n, p)], "weight_decay": 0.0},
                                 {"params": [p for n, p in ps if not ex(n, p)], "weight_decay": 0.2}], lr=5e-4, betas=(0.9, 0.98), eps=1e-6)
        def step_fn(im, tx):
            f = model(im, tx); return lf(f[0], f[1], f[2])
    sched = cosine_lr(opt, 5e-4, 5, 43) if "hfsched" not in MODE else None
    hf = get_scheduler("cosine", opt, num_warmup_steps=5, num_training_steps=43) if "hfsched" in MODE else None
    losses = []
    for i, idx in enumerate(batches):
        if sched and "shift" in MODE:
            if i == 0:
                for g in opt.param_groups: g["lr"] = 0.0
            else:
                sched(i - 1)
        elif sched: sched(i)
        torch.manual_seed(step_seed(0, 0, i, 0))
        im = obj.views(obj.train.images[idx]) if "views" in MODE else eval_view(obj.train.images[idx], obj.image_size, obj.mean, obj.std)
        tx = obj.train_captions.sample(idx, False)
        loss = step_fn(im, tx); opt.zero_grad(); loss.backward(); opt.step()
        if kind != "mmssl":
            with torch.no_grad(): model.logit_scale.clamp_(0, math.log(100))
        if hf: hf.step()
        losses.append(loss.item())
    print(kind, " ".join("%.3f" % l for l in losses[::6]), "last5 %.4f" % (sum(losses[-5:]) / 5), flush=True)
if MODE == "plain":
    run("open_clip")
run("mmssl")
