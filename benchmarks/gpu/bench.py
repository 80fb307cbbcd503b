"""The stages of the GPU benchmark (driven by run.sh): each measures probekit next to the bare PyTorch
equivalent in one process, prints one summary line and writes its figures as JSON.

    python benchmarks/gpu/bench.py extract|sgd|lbfgs|finetune --json PART.json [--dry-run] [--budget S]
    python benchmarks/gpu/bench.py collect --parts DIR --out FILE.json [--dry-run]

- extract:  ResNet-50 and ViT-B/32 (random init, bf16 autocast): `probekit.extract.extract` from a
            generated folder of JPEGs and from the same images preprocessed in memory, vs the bare
            forward pass over those preprocessed batches already on the device;
- sgd:      10 SGD heads (2 lrs x 5 seeds) on synthetic ImageNet-scale features (float16 storage),
            batch 32,768, a record (ID + OOD accuracy) every 10 steps: steps/s, peak device memory;
- lbfgs:    the ten-λ L-BFGS sweep (float32) on synthetic CLIP-sized features: seconds, iterations;
- finetune: ResNet-50 training img/s, `probekit finetune` (AMP, channels_last) vs a plain AMP loop
            over the same in-memory images, augmentation, batch and workers.
`--dry-run` runs every stage at tiny sizes on the CPU (what the test suite checks).
Every stage keeps to `--budget` seconds: work still running at the deadline stops and the stage
reports what it measured until then, so run.sh's hard per-stage timeout is a last resort.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

MEMORY_SET = "gpu-bench-memory"  # the generated images, held in memory, as a registered probekit dataset
CLASSES = [f"class{i}" for i in range(10)]


@dataclass(frozen=True)
class Sizes:
    device: str
    images: int                 # generated images (JPEG folder and in memory)
    image_wh: tuple[int, int]   # their width x height (ImageNet-like 4:3)
    extract_size: int
    extract_batch: int
    extract_models: tuple[str, ...]
    sgd_rows: int
    sgd_dim: int
    sgd_classes: int
    sgd_eval_rows: tuple[int, int]  # ID, OOD
    sgd_batch: int
    sgd_steps: int
    lbfgs_rows: int
    lbfgs_dim: int
    lbfgs_classes: int
    lbfgs_val_rows: int
    lbfgs_max_iter: int
    ft_model: str
    ft_size: int
    ft_batch: int
    ft_steps: int
    ft_workers: int
    ft_warmup: int              # steps before the steady-state clock starts (probekit records every this many steps)


REAL = Sizes(device="cuda", images=6144, image_wh=(400, 300), extract_size=224, extract_batch=256,
             extract_models=("resnet50", "vit_b_32"), sgd_rows=1_281_167, sgd_dim=2048, sgd_classes=1000,
             sgd_eval_rows=(50_000, 10_000), sgd_batch=32768, sgd_steps=80, lbfgs_rows=1_281_167, lbfgs_dim=512,
             lbfgs_classes=1000, lbfgs_val_rows=50_000, lbfgs_max_iter=100, ft_model="resnet50", ft_size=224,
             ft_batch=128, ft_steps=140, ft_workers=min(12, max(1, (os.cpu_count() or 2) - 2)), ft_warmup=20)
# the dry run: the same code at toy sizes on the CPU; timm's tiny test networks stand in for the two models
DRY = Sizes(device="cpu", images=20, image_wh=(48, 40), extract_size=32, extract_batch=10,
            extract_models=("test_resnet", "test_vit"), sgd_rows=2048, sgd_dim=32, sgd_classes=10, sgd_eval_rows=(256, 128),
            sgd_batch=256, sgd_steps=20, lbfgs_rows=500, lbfgs_dim=16, lbfgs_classes=10, lbfgs_val_rows=200,
            lbfgs_max_iter=5, ft_model="test_resnet", ft_size=32, ft_batch=4, ft_steps=8, ft_workers=0, ft_warmup=2)
SGD_LRS, SGD_SEEDS, SGD_EVAL_EVERY = (0.001, 0.01), (0, 1, 2, 3, 4), 10
LBFGS_TOL = 1e-4  # scikit-learn's default criterion (max |gradient| of the mean objective)


class OutOfTime(Exception):
    """Raised from a solver callback when the stage's budget is spent."""


def _torch():
    import torch

    torch.backends.cudnn.benchmark = False  # what probekit users get
    return torch


def _sync(dev) -> None:
    if dev.type == "cuda":
        import torch

        torch.cuda.synchronize(dev)


def _peak_gb(dev) -> float | None:
    if dev.type != "cuda":
        return None
    import torch

    return round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)


# ---------------------------------------------------------------------- generated images


def _make_jpeg(job) -> None:
    """One smooth random image (bicubic upsampled noise, like photos compress) saved as JPEG quality 90."""
    from PIL import Image

    i, path, (w, h) = job
    rng = np.random.default_rng(i)
    low = rng.integers(0, 256, size=(max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(low).resize((w, h), Image.BICUBIC), dtype=np.int16)
    img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path, quality=90)


def _decode(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def make_image_folder(root: Path, s: Sizes) -> tuple[list[str], np.ndarray]:
    """A class-per-folder tree of `s.images` JPEGs (10 classes); returns their paths and labels in folder order."""
    import multiprocessing as mp

    labels = np.arange(s.images) % len(CLASSES)
    for c in CLASSES:
        (root / c).mkdir(parents=True, exist_ok=True)
    paths = [str(root / CLASSES[y] / f"{i:06d}.jpg") for i, y in enumerate(labels)]
    with mp.get_context("fork").Pool(os.cpu_count() or 1) as pool:
        pool.map(_make_jpeg, [(i, p, s.image_wh) for i, p in enumerate(paths)], chunksize=32)
    order = np.argsort(paths, kind="stable")  # the folder dataset lists files sorted by path
    return [paths[i] for i in order], labels[order]


def decode_all(paths: list[str]) -> np.ndarray:
    """[N, H, W, 3] uint8: the JPEGs decoded, in parallel."""
    import multiprocessing as mp

    with mp.get_context("fork").Pool(os.cpu_count() or 1) as pool:
        return np.stack(pool.map(_decode, paths, chunksize=32))


def register_memory_set(images: np.ndarray, labels: np.ndarray, name: str = MEMORY_SET) -> str:
    """Make `images` a probekit dataset `name:all` (no decoding: PIL images straight from the array)."""
    from probekit.datasets.base import ArrayDataset
    from probekit.datasets.registry import register_dataset

    @register_dataset(name, ("all",), label_space=name, offline=True)
    def build(split, *, root, transform, download):  # noqa: ARG001 - the registry's builder signature
        return ArrayDataset(name=name, split=split, images=images, targets=labels, classes=CLASSES, label_space=name,
                            root="memory", origin="generated images", transform=transform)

    return name


# ---------------------------------------------------------------------- extract


def register_tensor_set(tensors, labels: np.ndarray, name: str) -> str:
    """Make already-preprocessed tensors [N, 3, S, S] a probekit dataset `name:all`: its items are the
    tensors themselves, so an extract over it is probekit's loop without any image decoding or transform."""
    from probekit.datasets.base import ImageDataset
    from probekit.datasets.registry import register_dataset

    class Preprocessed(ImageDataset):
        def __init__(self, split):
            self.name, self.split, self.root, self.transform = name, split, "memory", None
            self.classes, self.label_space, self.targets = CLASSES, name, np.asarray(labels, dtype=np.int64)

        def __getitem__(self, i):
            return tensors[i], int(self.targets[i])

        def source(self, i):
            return f"preprocessed row {i}"

        def _fingerprint(self):
            return {"kind": "preprocessed tensors", "shape": list(tensors.shape)}

    @register_dataset(name, ("all",), label_space=name, offline=True)
    def build(split, *, root, transform, download):  # noqa: ARG001 - the items are already transformed
        return Preprocessed(split)

    return name


def _preprocessed(dataset, batch: int, workers: int):
    """The dataset's own transform applied to every image (in DataLoader workers): [N, 3, S, S] float32."""
    torch = _torch()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, num_workers=workers)
    return torch.cat([x for x, _ in loader])


def bare_forward(model, batches, dev, amp) -> float:
    """Images/s of the model alone over batches already on the device (bf16 autocast, channels_last)."""
    torch = _torch()
    with torch.inference_mode(), torch.autocast(dev.type, dtype=amp):
        model(batches[0])  # warm-up
        _sync(dev)
        t0 = time.perf_counter()
        for x in batches:
            model(x)
        _sync(dev)
    return sum(len(x) for x in batches) / (time.perf_counter() - t0)


def probekit_extract(model: str, dataset: str, s: Sizes, workers: int | None) -> dict:
    """`probekit.extract.extract` into a fresh store: images/s of its compute loop and end to end."""
    from probekit import extract as E

    loop_s = []
    run = getattr(E, "_run_positions", None)  # the compute loop (data, forward, writes), timed when it is there
    if run is not None:
        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return run(*a, **k)
            finally:
                loop_s.append(time.perf_counter() - t)
        E._run_positions = timed
    try:
        with tempfile.TemporaryDirectory() as store:
            t = time.perf_counter()
            path = E.extract(model, dataset, "all", weights="none", cache_dir=store, image_size=s.extract_size,
                             batch_size=s.extract_batch, device=s.device, workers=workers, precision="bf16",
                             progress=False, quiet=True)
            end_to_end = time.perf_counter() - t
            assert path.exists()
    finally:
        if run is not None:
            E._run_positions = run
    rows = s.images
    out = {"images_per_s_end_to_end": rows / end_to_end, "workers": "default" if workers is None else workers}
    if loop_s:
        out["images_per_s_loop"] = rows / sum(loop_s)
    return out


def _extract_model(name: str, s: Sizes, folder: Path, labels: np.ndarray, dev, cpus: int, deadline: float) -> dict:
    """Bare forward vs probekit from tensors and from the JPEG folder, for one model."""
    torch = _torch()
    from probekit.backbones import create_backbone
    from probekit.datasets import create_dataset

    bb = create_backbone(name, "none", image_size=s.extract_size)
    ds = create_dataset(MEMORY_SET, "all", transform=bb.transform)
    x_host = _preprocessed(ds, s.extract_batch, 0 if s.device == "cpu" else min(16, cpus))
    x = x_host.to(dev)
    model = bb.model.to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    batches = list(x.split(s.extract_batch))
    bare = [bare_forward(model, batches, dev, torch.bfloat16)]
    tensor_set = register_tensor_set(x_host, labels, f"gpu-bench-tensors-{name}")
    r = {"bare_images_per_s": None, "from_tensors": probekit_extract(name, tensor_set, s, None),
         "from_folder": probekit_extract(name, f"folder:{folder}", s, None)}
    if cpus > 8 and time.time() < deadline:  # probekit's default is min(8, CPUs) workers on CUDA
        r["from_folder_all_cpus"] = probekit_extract(name, f"folder:{folder}", s, cpus)
    bare.append(bare_forward(model, batches, dev, torch.bfloat16))  # again, after: load drift shows as a spread
    del model, batches, x, x_host
    r["bare_images_per_s"] = float(np.mean(bare))
    r["bare_spread"] = [round(b, 1) for b in bare]
    for key in ("from_tensors", "from_folder", "from_folder_all_cpus"):
        if key in r:
            rate = r[key].get("images_per_s_loop", r[key]["images_per_s_end_to_end"])
            r[key]["ratio_vs_bare"] = rate / r["bare_images_per_s"]
    return r


def stage_extract(s: Sizes, deadline: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "jpegs"
        t = time.perf_counter()
        paths, labels = make_image_folder(folder, s)
        images = decode_all(paths)
        gen_s = time.perf_counter() - t
        register_memory_set(images, labels)
        torch = _torch()
        dev = torch.device(s.device)
        cpus = os.cpu_count() or 1
        result = {"images": s.images, "image_wh": list(s.image_wh), "jpeg_bytes_mean": int(np.mean([os.path.getsize(p) for p in paths])),
                  "generate_s": round(gen_s, 1), "image_size": s.extract_size, "batch_size": s.extract_batch,
                  "precision": "bf16", "cpus": cpus, "models": {}}
        for name in s.extract_models:
            if time.time() > deadline:
                result["models"][name] = {"skipped": "stage budget spent"}
                continue
            try:
                result["models"][name] = _extract_model(name, s, folder, labels, dev, cpus, deadline)
            except Exception as e:  # noqa: BLE001 - one model failing must not lose the other's figures
                import traceback

                result["models"][name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    parts = []
    for name, r in result["models"].items():
        if "skipped" in r or "error" in r:
            parts.append(f"{name} {r.get('skipped') or r['error']}")
            continue
        parts.append(f"{name} bare {r['bare_images_per_s']:.0f} img/s, probekit from tensors {r['from_tensors']['ratio_vs_bare']:.2f}x, "
                     f"from JPEG folder {r['from_folder']['ratio_vs_bare']:.2f}x"
                     + (f" ({r['from_folder_all_cpus']['ratio_vs_bare']:.2f}x with {cpus} workers)" if "from_folder_all_cpus" in r else ""))
    result["summary"] = "; ".join(parts) + " (goal >= 0.85)"
    return result


# ---------------------------------------------------------------------- synthetic features


def _features(n: int, centers, noise: float, gen, dtype, chunk: int = 131072):
    """Rows near random class centres: (X [n, D] in `dtype` on the centres' device, y [n] int64)."""
    torch = _torch()
    dev = centers.device
    y = torch.randint(0, centers.shape[0], (n,), generator=gen, device=dev)
    X = torch.empty(n, centers.shape[1], dtype=dtype, device=dev)
    for lo in range(0, n, chunk):
        yc = y[lo:lo + chunk]
        X[lo:lo + chunk] = centers[yc] + noise * torch.randn(len(yc), centers.shape[1], generator=gen, device=dev)
    return X, y


def _fit(est, X, y, *args, **kw):
    """`est.fit` on device tensors; an estimator that wants host arrays gets them (same figures, slower setup)."""
    try:
        return est.fit(X, y, *args, **kw), "device tensors"
    except OutOfTime:
        raise
    except (TypeError, ValueError) as e:
        print(f"fit refused device tensors ({type(e).__name__}: {e}); retrying with numpy arrays", file=sys.stderr)
        host = lambda a: a.cpu().numpy() if hasattr(a, "cpu") else a  # noqa: E731
        args = [host(a) for a in args]
        if "eval_sets" in kw:
            kw["eval_sets"] = {k: (host(a), host(b)) for k, (a, b) in kw["eval_sets"].items()}
        return est.fit(host(X), host(y), *args, **kw), "numpy arrays"


def stage_sgd(s: Sizes, deadline: float) -> dict:
    torch = _torch()
    from probekit.heads.sgd import SGDHeads

    dev = torch.device(s.device)
    gen = torch.Generator(device=dev).manual_seed(0)
    centers = torch.randn(s.sgd_classes, s.sgd_dim, generator=gen, device=dev)
    X, y = _features(s.sgd_rows, centers, 4.0, gen, torch.float16)
    Xi, yi = _features(s.sgd_eval_rows[0], centers, 4.0, gen, torch.float16)
    Xo, yo = _features(s.sgd_eval_rows[1], centers, 5.0, gen, torch.float16)
    steps_per_epoch = math.ceil(s.sgd_rows / s.sgd_batch)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    marks: list[tuple[int, float, float]] = []

    def callback(p) -> None:
        _sync(dev)
        marks.append((p.step, time.perf_counter(), float(np.mean(p.acc["id"]))))
        if time.time() > deadline:
            raise OutOfTime

    est = SGDHeads(SGD_LRS, SGD_SEEDS, batch_size=s.sgd_batch, epochs=s.sgd_steps / steps_per_epoch,
                   eval_every=SGD_EVAL_EVERY, storage_dtype="float16", device=dev)
    t = time.perf_counter()
    fed, stopped = "device tensors", False
    try:
        _, fed = _fit(est, X, y, eval_sets={"id": (Xi, yi), "ood": (Xo, yo)}, callback=callback)
    except OutOfTime:
        stopped = True
    fit_s = time.perf_counter() - t
    (s0, t0, _), (s1, t1, acc) = marks[0], marks[-1]
    steps_per_s = (s1 - s0) / (t1 - t0) if s1 > s0 else None
    feature_gb = (X.numel() * X.element_size() + Xi.numel() * 2 + Xo.numel() * 2) / 2**30
    result = {"rows": s.sgd_rows, "dim": s.sgd_dim, "classes": s.sgd_classes, "heads": len(SGD_LRS) * len(SGD_SEEDS),
              "batch_size": s.sgd_batch, "eval_every": SGD_EVAL_EVERY, "eval_rows": list(s.sgd_eval_rows),
              "storage_dtype": "float16", "fed": fed, "steps": s1, "steps_planned": s.sgd_steps,
              "stopped_by_budget": stopped, "steps_per_s": steps_per_s, "fit_s": round(fit_s, 2),
              "setup_s": round(t0 - t, 2), "peak_device_memory_gb": _peak_gb(dev), "feature_gb": round(feature_gb, 2),
              "final_mean_acc_id": acc}
    rate = f"{steps_per_s:.2f} steps/s" if steps_per_s else "no steps timed"
    peak = f", peak {result['peak_device_memory_gb']} GB (features {feature_gb:.1f} GB)" if dev.type == "cuda" else ""
    result["summary"] = (f"{result['heads']} heads, {s.sgd_rows} x {s.sgd_dim} float16, batch {s.sgd_batch}, record every "
                         f"{SGD_EVAL_EVERY}: {rate} over {s1} steps{peak}" + (" (stopped by the stage budget)" if stopped else ""))
    return result


def stage_lbfgs(s: Sizes, deadline: float) -> dict:
    torch = _torch()
    from probekit.heads.lbfgs import DEFAULT_L2_GRID, LBFGSLogistic

    dev = torch.device(s.device)
    gen = torch.Generator(device=dev).manual_seed(1)
    centers = torch.randn(s.lbfgs_classes, s.lbfgs_dim, generator=gen, device=dev)

    def unit(n):  # CLIP-like: unit-norm embeddings
        X, y = _features(n, centers, 3.0, gen, torch.float32)
        return X / X.norm(dim=1, keepdim=True), y

    X, y = unit(s.lbfgs_rows)
    Xv, yv = unit(s.lbfgs_val_rows)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    iters: dict[float, int] = {}

    def callback(p) -> None:
        iters[p.extra["l2"]] = p.step
        if time.time() > deadline:
            raise OutOfTime

    est = LBFGSLogistic(DEFAULT_L2_GRID, max_iter=s.lbfgs_max_iter, tol=LBFGS_TOL, dtype="float32", device=dev)
    t = time.perf_counter()
    fed, stopped = "device tensors", False
    try:
        _, fed = _fit(est, X, y, Xv, yv, callback=callback)
    except OutOfTime:
        stopped = True
    _sync(dev)
    seconds = time.perf_counter() - t
    solved = iters if stopped else dict(zip(est.l2_grid_, est.n_iter_))  # n_iter_: aligned with l2_grid_
    n_iter = {f"{k:.3g}": int(v) for k, v in solved.items()}
    total = sum(n_iter.values())
    done = getattr(est, "converged_", None) if not stopped else None
    converged = {f"{k:.3g}": bool(v) for k, v in done.items()} if isinstance(done, dict) else {}
    result = {"rows": s.lbfgs_rows, "dim": s.lbfgs_dim, "classes": s.lbfgs_classes, "val_rows": s.lbfgs_val_rows,
              "dtype": "float32", "tol": LBFGS_TOL, "max_iter_per_l2": s.lbfgs_max_iter, "fed": fed,
              "l2_solved": len(n_iter), "l2_planned": len(DEFAULT_L2_GRID), "stopped_by_budget": stopped,
              "total_s": round(seconds, 2), "iterations": total, "iterations_per_l2": n_iter, "converged": converged,
              "s_per_iteration": seconds / total if total else None, "peak_device_memory_gb": _peak_gb(dev)}
    if not stopped:
        result["chosen_l2"] = est.chosen_l2_
        result["val_acc"] = float(est.val_scores_[est.chosen_l2_])
    result["summary"] = (f"ten-λ sweep on {s.lbfgs_rows} x {s.lbfgs_dim}, {s.lbfgs_classes} classes, float32: {seconds:.1f} s, "
                         f"{total} iterations over {len(n_iter)} λ" + (f", chose λ={est.chosen_l2_:.3g}" if not stopped else
                                                                        " (stopped by the stage budget)"))
    return result


# ---------------------------------------------------------------------- finetune


def plain_amp_loop(s: Sizes, images: np.ndarray, labels: np.ndarray, steps: int) -> dict:
    """The textbook loop: torchvision transforms, shuffled DataLoader, AMP + channels_last, SGD; images/s."""
    torch = _torch()
    from torchvision import transforms as T

    from probekit.backbones import create_classifier
    from probekit.datasets.base import ArrayDataset

    dev = torch.device(s.device)
    torch.manual_seed(0)
    clf = create_classifier(s.ft_model, len(CLASSES), "none", image_size=s.ft_size)
    tf = T.Compose([T.Resize(s.ft_size), T.CenterCrop(s.ft_size), T.RandomCrop(s.ft_size, padding=round(s.ft_size / 8)),
                    T.RandomHorizontalFlip(), T.PILToTensor()])
    data = ArrayDataset(name="plain", split="all", images=images, targets=labels, classes=CLASSES, label_space="plain",
                        root="memory", origin="generated images", transform=tf)
    loader = torch.utils.data.DataLoader(data, batch_size=s.ft_batch, shuffle=True, drop_last=True, num_workers=s.ft_workers,
                                         pin_memory=dev.type == "cuda")
    cuda = dev.type == "cuda"
    model = clf.model.to(dev)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    mean = torch.tensor(clf.mean, device=dev).view(1, 3, 1, 1) * 255
    std = torch.tensor(clf.std, device=dev).view(1, 3, 1, 1) * 255
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    done, start, marks = 0, time.perf_counter(), {}
    while done < steps:
        for x, y in loader:
            x = (x.to(dev, non_blocking=True).float() - mean) / std
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
                loss = torch.nn.functional.cross_entropy(model(x), y.to(dev, non_blocking=True))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if done % s.ft_warmup == 0 or done == steps:
                _sync(dev)
                marks[done] = time.perf_counter()
            if done == steps:
                break
    out = {"images_per_s": steps * s.ft_batch / (marks[steps] - start)}
    if s.ft_warmup in marks and steps > s.ft_warmup:
        out["steady_images_per_s"] = (steps - s.ft_warmup) * s.ft_batch / (marks[steps] - marks[s.ft_warmup])
    return out


def probekit_finetune(s: Sizes, steps: int) -> dict:
    """`probekit finetune` (the CLI, in this process) on the registered in-memory set.

    `images_per_s`: its own summary (the whole loop with data start-up and checkpoints, evaluations
    excluded); `steady_images_per_s`: between its records at steps `ft_warmup` and `steps` (the clock of each
    record is read after its evaluation, which on 20 images is a few milliseconds).
    """
    from probekit.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        rc = main(["finetune", "--model", s.ft_model, "--weights", "none", "--dataset", f"{MEMORY_SET}:all",
                   "--id", f"{MEMORY_SET}:all", "--eval-subset", "2", "--image-size", str(s.ft_size),
                   "--augmentation", "crop-flip", "--batch-size", str(s.ft_batch), "--lr", "0.01", "--seeds", "0",
                   "--max-steps", str(steps), "--eval-every", str(s.ft_warmup), "--workers", str(s.ft_workers),
                   "--device", s.device, "--out", str(out), "--no-progress"])
        if rc != 0:
            raise RuntimeError(f"probekit finetune exited {rc}")
        summary = json.loads((out / "summary.json").read_text())
        config = json.loads((out / "config.json").read_text())
        clock = {r["step"]: r.get("time_s") for r in map(json.loads, (out / "log.jsonl").read_text().splitlines())}
    result = {"images_per_s": summary["train_images_per_s"], "train_s": summary["train_s"], "eval_s": summary["eval_s"],
              "precision": config["precision"], "channels_last": config["run"]["channels_last"]}
    if clock.get(s.ft_warmup) is not None and clock.get(steps) is not None and steps > s.ft_warmup:
        result["steady_images_per_s"] = (steps - s.ft_warmup) * s.ft_batch / (clock[steps] - clock[s.ft_warmup])
    return result


def stage_finetune(s: Sizes, deadline: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        paths, labels = make_image_folder(Path(tmp) / "jpegs", s)
        images = decode_all(paths)
    register_memory_set(images, labels)
    plain_amp_loop(s, images, labels, max(1, s.ft_steps // 20))  # warm-up: CUDA context, cuDNN and cuBLAS handles
    plain = plain_amp_loop(s, images, labels, s.ft_steps)
    try:
        pk = probekit_finetune(s, s.ft_steps)
    except Exception as e:  # keep the plain loop's figure
        import traceback

        traceback.print_exc()
        return {"plain": plain, "probekit": {"error": f"{type(e).__name__}: {e}"},
                "summary": f"plain AMP loop {plain['images_per_s']:.0f} img/s; probekit finetune failed: {type(e).__name__}: {e}"}
    key = "steady_images_per_s" if "steady_images_per_s" in pk and "steady_images_per_s" in plain else "images_per_s"
    ratio = pk[key] / plain[key]
    result = {"model": s.ft_model, "image_size": s.ft_size, "batch_size": s.ft_batch, "steps": s.ft_steps,
              "workers": s.ft_workers, "plain": plain, "probekit": pk, "ratio": ratio, "ratio_of": key,
              "ratio_whole_run": pk["images_per_s"] / plain["images_per_s"],
              "summary": f"{s.ft_model} {s.ft_size} px batch {s.ft_batch}, {pk['precision']} + channels_last "
                         f"{pk['channels_last']}: probekit {pk[key]:.0f} img/s vs plain AMP loop {plain[key]:.0f} img/s "
                         f"= {ratio:.3f}x {key.replace('_images_per_s', '') if key != 'images_per_s' else ''} (goal >= 0.95); "
                         f"whole run incl. start-up and checkpoints {pk['images_per_s'] / plain['images_per_s']:.3f}x"}
    return result


# ---------------------------------------------------------------------- collect


def _pytest_report(xml_path: Path) -> dict | None:
    """Counts and the failed tests (with the first lines of their messages) from pytest's junit XML."""
    if not xml_path.exists():
        return None
    root = ET.parse(xml_path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failed = []
    for case in suite.iter("testcase"):
        for kind in ("failure", "error"):
            node = case.find(kind)
            if node is not None:
                text = (node.get("message") or node.text or "").strip()
                failed.append({"test": f"{case.get('classname')}::{case.get('name')}", "kind": kind, "message": text[:600]})
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {**counts, "seconds": float(suite.get("time", 0) or 0), "failed": failed[:40]}


def _machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    except Exception as e:  # noqa: BLE001 - a broken install is itself worth reporting
        info["torch_error"] = f"{type(e).__name__}: {e}"
    return info


def collect(parts: Path, out: Path, dry_run: bool) -> dict:
    """One JSON from the stages' parts, statuses (stage.status: 'ok 12 85' / 'timeout 85 85' ...) and log tails."""
    stages = {}
    for status_file in sorted(parts.glob("*.status"), key=lambda p: p.stat().st_mtime):
        name = status_file.stem
        state, seconds, limit = status_file.read_text().split()[:3]
        entry = {"status": state, "seconds": int(seconds), "limit_s": int(limit)}
        part = parts / f"{name}.json"
        if part.exists():
            entry["result"] = json.loads(part.read_text())
            if state == "timeout":  # its figures were written: only the process's exit ran past the limit
                entry["status"] = "late"
        if name == "pytest":
            entry["result"] = _pytest_report(parts / "pytest.xml")
        log = parts / f"{name}.log"
        if state != "ok" and log.exists():
            entry["log_tail"] = log.read_text(errors="replace")[-4000:]
        stages[name] = entry
    report = {"benchmark": "probekit GPU benchmark (benchmarks/gpu/run.sh)", "dry_run": dry_run, "machine": _machine(),
              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "sizes": asdict(DRY if dry_run else REAL),
              "stages": stages}
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=1, default=str)
    if len(text) > 1_000_000:  # keep the report under 1 MB: drop log tails first
        for entry in stages.values():
            entry.pop("log_tail", None)
        text = json.dumps(report, indent=1, default=str)
    out.write_text(text + "\n")
    return report


STAGES = {"extract": stage_extract, "sgd": stage_sgd, "lbfgs": stage_lbfgs, "finetune": stage_finetune}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=[*STAGES, "collect"])
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU")
    ap.add_argument("--json", type=Path, help="where a stage writes its figures")
    ap.add_argument("--budget", type=float, default=None, help="seconds this stage may take (it stops its work in time)")
    ap.add_argument("--parts", type=Path, help="collect: the folder of stage parts")
    ap.add_argument("--out", type=Path, help="collect: the report file")
    args = ap.parse_args(argv)
    if args.stage == "collect":
        report = collect(args.parts, args.out, args.dry_run)
        bad = [k for k, v in report["stages"].items() if v["status"] not in ("ok", "skipped")]
        print(f"report: {args.out} ({args.out.stat().st_size} bytes); stages not ok: {', '.join(bad) or 'none'}")
        return 0
    sizes = DRY if args.dry_run else REAL
    if sizes.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print(f"{args.stage}: no CUDA device visible; run with --dry-run on a machine without one", file=sys.stderr)
            return 2
    deadline = time.time() + (args.budget if args.budget else 1e9)
    result = STAGES[args.stage](sizes, deadline)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"{args.stage}: {result['summary']}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout's probekit, also without pip install -e
    raise SystemExit(main())
