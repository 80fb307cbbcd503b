"""Images/s of `probekit extract` next to the bare forward pass and a plain PyTorch loop, in one run.

    python benchmarks/extract/run.py [--model efficientnet_lite0] [--dataset digits] [--split train]
                                     [--image-size 224] [--batch-size 64] [--device cpu]

(a) bare forward: the model over preprocessed tensors already in memory (the limit);
(b) plain loop: the CLIP README's recipe, dataset with the preprocess transform, a DataLoader,
    `with torch.no_grad(): features = model(images)`, features gathered in a list;
(c) probekit: `probekit.extract.extract` into a fresh cache folder, timed over its compute loop
    (data loading, forward, HDF5 writes and commits) and end to end (plus model/dataset setup).
The bare pass runs first and last and the two are averaged, so drift in machine load is visible.
Prints a table and writes JSON to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from probekit import extract as E
from probekit.backbones import create_backbone
from probekit.datasets import create_dataset

RESULTS = Path(__file__).resolve().parents[1] / "results"


def bare_forward(model, batches, device) -> float:
    with torch.inference_mode():
        model(batches[0][:2].to(device))  # warm-up
        t0, c0 = time.perf_counter(), time.process_time()
        for x in batches:
            model(x.to(device))
        if device.type == "cuda":
            torch.cuda.synchronize()
    return time.perf_counter() - t0, time.process_time() - c0


def plain_loop(model, dataset, batch_size, workers, device) -> float:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    feats = []
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.no_grad():
        for images, _ in loader:
            feats.append(model(images.to(device)).cpu())
    torch.cat(feats)
    return time.perf_counter() - t0, time.process_time() - c0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--weights", default="default")
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--split", default="train")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers for (b) and (c) (default: probekit's default for the device)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of all methods; medians are reported (default 3)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own); 1 is steadier on a shared machine")
    ap.add_argument("--out", default=None, help="JSON file (default benchmarks/results/extract-<model>-<dataset>-<size>-<time>.json)")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batch_size, workers = E._defaults(device, args.batch_size, args.workers)
    bb = create_backbone(args.model, args.weights, image_size=args.image_size)
    ds = create_dataset(args.dataset, args.split, transform=bb.transform)
    n = len(ds)
    model = bb.model.to(device)
    print(f"{args.model} on {args.dataset}:{args.split} ({n} images) at {args.image_size}px, batch {batch_size}, "
          f"workers {workers}, {device}, torch threads {torch.get_num_threads()}", file=sys.stderr)

    t0 = time.perf_counter()
    tensors = torch.stack([ds[i][0] for i in range(n)])
    preprocess_s = time.perf_counter() - t0
    batches = list(tensors.split(batch_size))

    def probekit_run():
        loop_time = []
        run = E._run_positions

        def timed(*a, **k):
            s, c = time.perf_counter(), time.process_time()
            try:
                return run(*a, **k)
            finally:
                loop_time.append((time.perf_counter() - s, time.process_time() - c))

        E._run_positions = timed
        try:
            with tempfile.TemporaryDirectory() as cache_dir:
                s = time.perf_counter()
                path = E.extract(args.model, args.dataset, args.split, weights=args.weights, cache_dir=cache_dir,
                                 image_size=args.image_size, batch_size=batch_size, device=args.device, workers=workers,
                                 progress=False, quiet=True)
                end_to_end = time.perf_counter() - s
                size = path.stat().st_size
        finally:
            E._run_positions = run
        return loop_time[0], end_to_end, size

    # rounds of (bare, plain, probekit, bare): each ratio compares neighbours in time, so drift in
    # machine load (other jobs) hits both sides; the median over rounds is reported
    rounds = []
    for r in range(args.rounds):
        t, cpu = {}, {}
        t["bare_before"], cpu["bare_before"] = bare_forward(model, batches, device)
        t["plain"], cpu["plain"] = plain_loop(model, ds, batch_size, workers, device)
        (t["probekit_loop"], cpu["probekit_loop"]), t["probekit_end_to_end"], size = probekit_run()
        t["bare_after"], cpu["bare_after"] = bare_forward(model, batches, device)
        t["bare"] = (t["bare_before"] + t["bare_after"]) / 2
        cpu["bare"] = (cpu["bare_before"] + cpu["bare_after"]) / 2
        rounds.append({"wall_s": t, "cpu_s": cpu})
        print(f"  round {r + 1}: " + ", ".join(f"{k} {n / v:.1f}" for k, v in t.items()) + " img/s; cpu-s/img "
              + ", ".join(f"{k} {v / n * 1000:.1f}ms" for k, v in cpu.items()), file=sys.stderr)

    def med(values):
        values = sorted(values)
        k = len(values) // 2
        return values[k] if len(values) % 2 else (values[k - 1] + values[k]) / 2

    rate = {k: med([n / r["wall_s"][k] for r in rounds]) for k in rounds[0]["wall_s"]}
    ratio = {k: med([r["wall_s"]["bare"] / r["wall_s"][k] for r in rounds]) for k in ("bare", "plain", "probekit_loop", "probekit_end_to_end")}
    cpu_ratio = {k: med([r["cpu_s"]["bare"] / r["cpu_s"][k] for r in rounds]) for k in ("bare", "plain", "probekit_loop")}
    rows = [
        ("bare forward (tensors in memory)", "bare"),
        ("plain PyTorch loop (CLIP README)", "plain"),
        ("probekit extract (compute loop)", "probekit_loop"),
        ("probekit extract (end to end)", "probekit_end_to_end"),
    ]
    print(f"\n{'method':36} {'img/s':>8} {'vs bare':>8} {'cpu vs bare':>12}   (median of {len(rounds)} round(s))")
    for name, key in rows:
        c = f"{cpu_ratio[key]:12.3f}" if key in cpu_ratio else f"{'':12}"
        print(f"{name:36} {rate[key]:8.1f} {ratio[key]:8.3f} {c}")
    print(f"(preprocessing alone: {n / preprocess_s:.1f} img/s; end to end includes building the model and dataset)")

    result = {
        "model": args.model, "dataset": args.dataset, "split": args.split, "images": n, "image_size": args.image_size,
        "batch_size": batch_size, "workers": workers, "device": str(device), "torch_threads": torch.get_num_threads(),
        "rounds": rounds, "images_per_s": rate, "ratio_vs_bare": ratio, "cpu_ratio_vs_bare": cpu_ratio,
        "preprocess_images_per_s": n / preprocess_s, "feature_file_bytes": size,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__},
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = Path(args.out) if args.out else RESULTS / f"extract-{args.model}-{args.dataset}-{args.image_size}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
