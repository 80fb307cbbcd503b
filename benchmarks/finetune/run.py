"""Training images/s of `probekit finetune` against a plain PyTorch loop, side by side in one run.

Both train the same network (same registry model, random init), batch, optimiser and
augmentation (Resize + RandomCrop with padding, no flip) on the bundled digits, on the same
threads. Rounds alternate plain / probekit so load from other processes hits both alike.
probekit's training time includes everything its loop does per step (seeded order and
augmentation, LR schedule, loss bookkeeping, stop-signal check, epoch checkpoints, progress)
but not the evaluations themselves, which the plain loop does not do; those are reported apart.

    python benchmarks/finetune/run.py --model resnet18 --image-size 64 --steps 200
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def plain_loop(model_name: str, size: int, batch: int, steps: int, workers: int) -> dict:
    import torch
    from torchvision import transforms as T

    from probekit.backbones import create_classifier
    from probekit.datasets import create_dataset

    torch.manual_seed(0)
    clf = create_classifier(model_name, 10, "none", image_size=size)
    tf = T.Compose([T.Resize(size), T.CenterCrop(size), T.RandomCrop(size, padding=round(size / 8)),
                    T.ToTensor(), T.Normalize(clf.mean, clf.std)])
    data = create_dataset("digits", "train", transform=tf)
    loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True, drop_last=True, num_workers=workers)
    model = clf.model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    done, start = 0, time.perf_counter()
    while done < steps:
        for x, y in loader:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if done == steps:
                break
    elapsed = time.perf_counter() - start
    return {"train_s": elapsed, "images": steps * batch, "images_per_s": steps * batch / elapsed}


def probekit_loop(model_name: str, size: int, batch: int, steps: int, workers: int, eval_every: int, eval_subset: int) -> dict:
    from probekit.finetune import FinetuneConfig, finetune

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        s = finetune(FinetuneConfig(model=model_name, weights="none", train="digits:train", ood=["mnist5k"], out=out,
                                    image_size=size, lrs=[0.01], seeds=[0], batch_size=batch, max_steps=steps,
                                    eval_every=eval_every, eval_subset=eval_subset, workers=workers, device="cpu",
                                    progress=False))
        total = time.perf_counter() - start
    return {"train_s": s["train_s"], "eval_s": s["eval_s"], "total_s": total, "images": s["train_images"],
            "images_per_s": s["train_images_per_s"], "images_per_s_incl_eval": s["train_images"] / (s["train_s"] + s["eval_s"])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2, help="alternating plain/probekit rounds")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--eval-subset", type=int, default=40, help="images per class per evaluation")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for r in range(args.rounds):
        plain = plain_loop(args.model, args.image_size, args.batch_size, args.steps, args.workers)
        pk = probekit_loop(args.model, args.image_size, args.batch_size, args.steps, args.workers, args.eval_every, args.eval_subset)
        rows.append({"round": r, "plain": plain, "probekit": pk, "ratio": pk["images_per_s"] / plain["images_per_s"]})
        print(f"round {r}: plain {plain['images_per_s']:.1f} img/s, probekit {pk['images_per_s']:.1f} img/s "
              f"(ratio {rows[-1]['ratio']:.3f}); probekit incl. eval {pk['images_per_s_incl_eval']:.1f} img/s, "
              f"eval {pk['eval_s']:.1f}s", flush=True)
    plain_ips = sum(r["plain"]["images"] for r in rows) / sum(r["plain"]["train_s"] for r in rows)
    pk_ips = sum(r["probekit"]["images"] for r in rows) / sum(r["probekit"]["train_s"] for r in rows)
    result = {"model": args.model, "image_size": args.image_size, "batch_size": args.batch_size, "steps": args.steps,
              "threads": torch.get_num_threads(), "workers": args.workers, "eval_every": args.eval_every,
              "eval_subset": args.eval_subset, "plain_images_per_s": plain_ips, "probekit_images_per_s": pk_ips,
              "ratio": pk_ips / plain_ips, "rounds": rows}
    print(f"overall: plain {plain_ips:.1f} img/s, probekit {pk_ips:.1f} img/s, ratio {pk_ips / plain_ips:.3f} (goal >= 0.95)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
