"""Stage 1: run a frozen backbone over a dataset once and keep its features in the feature store.

The loop keeps the model busy: a DataLoader decodes and preprocesses ahead (workers on
GPU machines), batches go to the device pinned and non-blocking, in channels-last and
under autocast when asked, and a writer thread with a bounded queue puts rows into the
HDF5 file while the next batch computes. Progress is committed at batch boundaries, so a
resumed run computes exactly the batches an uninterrupted run would (same composition,
hence bit-identical features). Under `torchrun` every rank extracts a contiguous run of
whole batches into its own shard file; rank 0 merges the shards into one entry.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import contextlib
import errno
import queue
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from probekit import cache
from probekit.errors import UserError
from probekit.runtime import Stopped, StopRequest, autocast, autocast_dtype, choose_device, torchrun_env  # noqa: F401  (Stopped: the API)

PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = ("float32", "float16")
log = logging.getLogger(__name__)
COMMIT_ROWS_ENV = "PROBEKIT_COMMIT_ROWS"  # test knob: commit every N images, to make kill tests cheap


class NonFiniteFeatures(UserError):
    """The backbone produced NaN / Inf features; the entry is abandoned (the same command would reproduce them)."""

    def __init__(self, count: int, first_index: int):
        self.count, self.first_index = count, first_index
        super().__init__(f"the backbone produced {count} NaN/Inf feature values (first at image {first_index}); "
                         "nothing was stored; check the weights, or use --precision fp32")


# ---------------------------------------------------------------- planning: what entry is this?


@dataclass
class Plan:
    backbone: Any
    dataset: Any
    path: Path
    attrs: dict


def _versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for dist in ("torch", "torchvision", "timm", "open_clip_torch", "h5py", "numpy", "probekit"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = ""
    if not out["probekit"]:
        from probekit import __version__

        out["probekit"] = __version__
    return out


def _command(model, dataset, split, weights, image_size, feature, precision, dtype, cache_dir, data_root) -> str:
    parts = ["probekit extract", f"--model {model}", f"--dataset {dataset}", f"--split {split}"]
    for flag, value, default in (("--weights", weights, "default"), ("--image-size", image_size, None), ("--feature", feature, None),
                                 ("--precision", precision, "fp32"), ("--dtype", dtype, "float32"),
                                 ("--cache-dir", cache_dir, None), ("--data-root", data_root, None)):
        if value is not None and str(value) != str(default):
            parts.append(f"{flag} {value}")
    return " ".join(parts)


def plan(model: str, dataset: str, split: str, *, weights: str = "default", cache_dir=None, data_root=None,
         image_size: int | None = None, feature: str | None = None, precision: str = "fp32", dtype: str = "float32",
         download: bool = False) -> Plan:
    """Build the backbone and dataset and name the cache entry they make (runs no image through the model)."""
    from probekit.backbones import create_backbone
    from probekit.datasets import create_dataset

    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if dtype not in DTYPES:
        raise UserError(f"unknown storage dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    folder = Path(cache.paths.cache_dir(cache_dir))
    backbone = create_backbone(model, weights, image_size=image_size, feature=feature)
    ds = create_dataset(dataset, split, root=data_root, transform=backbone.transform, download=download)
    describe = ds.describe()
    fields = cache.key_fields(backbone=backbone.name, weight_id=backbone.weight_id, transform_id=backbone.transform_id,
                              feature_kind=backbone.feature_kind, dataset=dataset, split=split, dataset_describe=describe,
                              precision=precision, dtype=dtype)
    key = cache.entry_key(fields)
    path = folder / cache.entry_filename(backbone.name, dataset, split, key)
    attrs = {
        "key": key,
        "backbone": backbone.name,
        "family": getattr(backbone, "family", ""),
        "weights": str(weights),
        "weight_id": backbone.weight_id,
        "transform_id": backbone.transform_id,
        "feature_kind": backbone.feature_kind,
        "image_size": image_size or "",
        "input_size": int(getattr(backbone, "input_size", 0) or 0),
        "feature": feature or "",
        "precision": precision,
        "dataset": dataset,
        "split": split,
        "classes": list(ds.classes),
        "num_classes": len(ds.classes),
        "label_space": ds.label_space,
        "dataset_describe": describe,
        "versions": _versions(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "extract_command": _command(model, dataset, split, weights, image_size, feature, precision, dtype, cache_dir, data_root),
    }
    return Plan(backbone, ds, path, attrs)


def entry_for(model: str, dataset: str, split: str, **kw: Any) -> Path:
    """The path the entry for these arguments has (or would have) in the store."""
    return plan(model, dataset, split, **kw).path


# ---------------------------------------------------------------- data: bad images survive workers


class _Items:
    """`dataset[i]` that returns a bad image as data instead of raising, so the message
    survives DataLoader workers intact and `--skip-bad` can record the index."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        from PIL import UnidentifiedImageError

        from probekit.datasets.images import BadImageError

        label = int(self.dataset.targets[i])
        try:
            image, _ = self.dataset[i]
        except BadImageError as e:
            return None, label, i, str(e)
        except (UnidentifiedImageError, OSError, SyntaxError) as e:  # a decoder failure the dataset did not wrap
            return None, label, i, f"cannot read image {self.dataset.source(i)}: {e}; replace or delete the file, or pass --skip-bad"
        return image, label, i, None


def _collate(items):
    import torch

    good = [it for it in items if it[3] is None]
    bad = [(it[2], it[3]) for it in items if it[3] is not None]
    images = torch.stack([it[0] for it in good]) if good else None
    labels = np.array([it[1] for it in good], dtype=np.int64)
    index = np.array([it[2] for it in good], dtype=np.int64)
    return {"images": images, "labels": labels, "index": index, "bad": bad, "positions": len(items)}


def batches_for(start: int, stop: int, batch_size: int) -> list[list[int]]:
    """Whole batches of source positions: batch k always holds [k*bs, (k+1)*bs)."""
    if start >= stop:  # all committed (a kill inside the final write): nothing left to compute
        return []
    first = (start // batch_size) * batch_size
    if first != start:
        raise ValueError(f"start {start} is not on a batch boundary of {batch_size}")
    return [list(range(s, min(s + batch_size, stop))) for s in range(start, stop, batch_size)]


def shard_range(n: int, batch_size: int, rank: int, world: int) -> tuple[int, int]:
    """Rank `rank`'s contiguous run of whole batches, as source positions [start, stop)."""
    nb = -(-n // batch_size)
    b0, b1 = rank * nb // world, (rank + 1) * nb // world
    return min(b0 * batch_size, n), min(b1 * batch_size, n)


# ---------------------------------------------------------------- the compute loop


class _Writer(threading.Thread):
    """Takes computed batches off a bounded queue and appends/commits them, overlapping compute."""

    def __init__(self, writer: cache.FeatureWriter, commit_rows: int, commit_seconds: float):
        super().__init__(daemon=True, name="probekit-feature-writer")
        self.writer, self.commit_rows, self.commit_seconds = writer, commit_rows, commit_seconds
        self.queue: queue.Queue = queue.Queue(maxsize=4)
        self.error: BaseException | None = None

    def run(self) -> None:
        pending, last = 0, time.monotonic()
        try:
            while True:
                item = self.queue.get()
                if item is None:
                    break
                out, event, labels, index, positions, skipped = item
                if event is not None:
                    event.synchronize()
                feats = out.numpy() if out is not None else np.zeros((0, self.writer.dim), np.float32)
                finite = np.isfinite(feats)
                if not finite.all():  # never stored: a complete entry must hold usable features
                    raise NonFiniteFeatures(int((~finite).sum()), int(index[np.flatnonzero(~finite.all(1))[0]]))
                self.writer.append(feats, labels, index, positions=positions, skipped=skipped)
                pending += positions
                if pending >= self.commit_rows or time.monotonic() - last >= self.commit_seconds:
                    self.writer.commit()
                    pending, last = 0, time.monotonic()
            if pending:
                self.writer.commit()
        except BaseException as e:  # handed to the main thread
            self.error = e
            while True:  # drain so the producer never blocks
                try:
                    if self.queue.get(timeout=0.1) is None:
                        break
                except queue.Empty:
                    continue

    def put(self, item) -> None:
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue


class _Prefetch:
    """Iterate a workers=0 DataLoader in a background thread, `depth` batches ahead.

    Decoding and resizing (PIL and torch release the GIL) then overlap the forward pass
    instead of alternating with it, without the start-up and IPC cost of worker processes.
    """

    _END = object()

    def __init__(self, iterable, depth: int = 2):
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._fill, args=(iterable,), daemon=True, name="probekit-prefetch")
        self.thread.start()

    def _fill(self, iterable) -> None:
        try:
            for item in iterable:
                if not self._put(item):
                    return
            self._put(self._END)
        except BaseException as e:  # re-raised in the consuming thread
            self._put(e)

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self):
        while True:
            item = self.queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


class _BatchBoundary(Exception):
    """A stop request reached the end of a batch; `extract` turns it into `runtime.Stopped`."""


def _run_positions(p: Plan, writer: cache.FeatureWriter, start: int, stop: int, *, batch_size: int, device, workers: int,
                   precision: str, skip_bad: bool, commit_rows: int, commit_seconds: float, progress: bool,
                   desc: str, on_commit=None, stop_request: StopRequest | None = None) -> None:
    """Extract source positions [start, stop) (start on a batch boundary) into `writer`."""
    import torch
    from probekit.progress import progress_bar

    cuda = device.type == "cuda"
    model = p.backbone.model.to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    model.eval()
    batches = batches_for(start, stop, batch_size)
    if not batches:
        writer.commit()
        return
    loader_kw: dict[str, Any] = {}
    if workers > 0:
        loader_kw.update(prefetch_factor=4, persistent_workers=False)
    loader = torch.utils.data.DataLoader(_Items(p.dataset), batch_sampler=batches, num_workers=workers, collate_fn=_collate,
                                         pin_memory=cuda, **loader_kw)
    amp_dtype = autocast_dtype(precision, device, allowed=PRECISIONS)
    thread = _Writer(writer, commit_rows, commit_seconds)
    thread.start()
    bar = progress_bar(total=stop - start, unit="img", desc=desc, enabled=progress, smoothing=0.1)
    failure: BaseException | None = None
    source = loader if workers > 0 else _Prefetch(loader)
    try:
        with torch.inference_mode():
            for batch in source:
                bad = batch["bad"]
                if bad and not skip_bad:
                    raise UserError(bad[0][1])
                out = event = None
                if batch["images"] is not None:
                    x = batch["images"].to(device, non_blocking=cuda)
                    if cuda:
                        x = x.contiguous(memory_format=torch.channels_last)
                    with autocast(device, amp_dtype):
                        out = model(x)
                    if out.ndim != 2 or out.shape[1] != writer.dim:
                        raise RuntimeError(f"backbone {p.backbone.name} gave features of shape {tuple(out.shape)}, expected [B, {writer.dim}]")
                    out = out.float()
                    if cuda:
                        out = out.to("cpu", non_blocking=True)
                        event = torch.cuda.Event()
                        event.record(torch.cuda.current_stream(device))  # the copy's stream, also on cuda:N != current
                thread.put((out, event, batch["labels"], batch["index"], batch["positions"], [i for i, _ in bad]))
                bar.update(batch["positions"])
                if on_commit is not None:
                    on_commit(writer)
                if stop_request is not None and stop_request.requested:
                    raise _BatchBoundary
    except BaseException as e:
        failure = e
    finally:
        bar.close()
        if isinstance(source, _Prefetch):
            source.close()
        try:
            thread.put(None)
        except BaseException as e:  # the writer itself failed and is draining the queue: end its drain
            failure = failure or e
            thread.queue.put(None)
        thread.join()
        if failure is None and thread.error is not None:
            failure = thread.error
    if failure is not None:
        raise failure


# ---------------------------------------------------------------- the public entry point


def _defaults(device, batch_size, workers):
    cuda = device.type == "cuda"
    if batch_size is None:
        batch_size = 256 if cuda else 64
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    if workers is None:
        workers = min(8, os.cpu_count() or 1) if cuda else 0
    if workers < 0:
        raise UserError(f"--workers must be 0 or more, got {workers}")
    return batch_size, workers


def extract(model: str, dataset: str, split: str, *, weights: str = "default", cache_dir=None, data_root=None,
            batch_size: int | None = None, device: str | None = None, workers: int | None = None,
            precision: str = "fp32", image_size: int | None = None, feature: str | None = None,
            skip_bad: bool = False, download: bool = False, dtype: str = "float32", progress: bool = True,
            commit_rows: int = 4096, commit_seconds: float = 60.0, quiet: bool = False) -> Path:
    """Extract features of `model` over `dataset:split` into the store and return the file.

    A complete entry is returned at once (the model never runs); a `.partial` left by a
    killed run is resumed from its committed rows with its original batch size. Under
    torchrun (any WORLD_SIZE) the ranks share the work and rank 0 writes the one entry.
    """
    folder = cache.writable_cache_dir(cache_dir)
    if os.environ.get(COMMIT_ROWS_ENV):
        commit_rows = max(1, int(os.environ[COMMIT_ROWS_ENV]))
    dev = choose_device(device)
    batch_size, workers = _defaults(dev, batch_size, workers)
    p = plan(model, dataset, split, weights=weights, cache_dir=folder if cache_dir else None, data_root=data_root,
             image_size=image_size, feature=feature, precision=precision, dtype=dtype, download=download)
    p.path = folder / p.path.name
    env = torchrun_env()
    run_kw = dict(device=dev, workers=workers, precision=precision, skip_bad=skip_bad, commit_rows=commit_rows,
                  commit_seconds=commit_seconds, progress=progress)
    if env.enabled:  # one torchrun process too: the multi-GPU path, tested on one GPU
        return _extract_distributed(p, batch_size=batch_size, dtype=dtype, quiet=quiet, **run_kw)
    if cache.is_complete(p.path):
        return p.path
    with cache.entry_lock(p.path, quiet=quiet):
        if cache.is_complete(p.path):  # another process finished it while we waited
            return p.path
        n = len(p.dataset)
        cache.check_free_space(p.path, total=n, dim=p.backbone.feature_dim, dtype=dtype, command=p.attrs["extract_command"])
        writer = cache.FeatureWriter(p.path, attrs={**p.attrs, "batch_size": batch_size}, total=n, dim=p.backbone.feature_dim, dtype=dtype)
        try:
            bs = writer.batch_size or batch_size
            if writer.resumed_from and not quiet:
                note = f" with its batch size {bs}" if bs != batch_size else ""
                log.info("resuming %s at %d of %d images%s", p.path.name, writer.resumed_from, n, note)
            with StopRequest() as stop, _quiet_disk_full_noise():
                try:
                    _run_positions(p, writer, writer.committed_positions, n, batch_size=bs,
                                   desc=f"{p.backbone.name} {dataset}:{split}", stop_request=stop, **run_kw)
                except _BatchBoundary:
                    raise stop.stopped(f"{writer.committed_positions} of {n} images of {p.path.name}",
                                       f"committed rows are kept, rerun `{p.attrs['extract_command']}` to resume") from None
                return writer.finish()
        except NonFiniteFeatures as e:
            writer.close()
            with contextlib.suppress(FileNotFoundError):
                writer.partial_path.unlink()  # its rows are of weights / a precision that cannot give a usable entry
            cause = ("fp16 overflows for this backbone: extract with --precision bf16 or fp32" if precision == "fp16" else
                     "the weights hold NaN/Inf or overflow on these images: check or replace the weights file (or pass other --weights)"
                     if str(weights) not in ("default", "none") else
                     "the network overflows on these images in this precision: extract with --precision fp32")
            raise UserError(f"{p.backbone.name} (weights {weights}, {p.backbone.weight_id}) produced {e.count} NaN/Inf feature "
                            f"values on {dataset}:{split} (first at image {e.first_index}); the entry was not stored, since the "
                            f"same command would produce them again; {cause}") from None
        except (OSError, RuntimeError) as e:  # HDF5 reports a failed write as RuntimeError("... errno = 28 ...")
            if _disk_full(e):
                raise UserError(f"no space left on the device holding the feature store {folder} ({writer.committed_positions} of "
                                f"{n} images committed); free space there (or pass --cache-dir DIR elsewhere) and rerun "
                                f"`{p.attrs['extract_command']}` to resume") from None
            raise
        finally:
            writer.close()


def _disk_full(e: BaseException) -> bool:
    """An OSError from a full disk or quota, whether raised by os or wrapped by HDF5."""
    text = str(e)
    return (getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left" in text
            or "errno = 28" in text or "quota exceeded" in text.lower())


@contextlib.contextmanager
def _quiet_disk_full_noise() -> Iterator[None]:
    """HDF5 objects freed after a failed write print 'Exception ignored ... No space left' tracebacks;
    the one-line disk-full error says it all, so those (and only those) are dropped."""
    previous = sys.unraisablehook

    def hook(unraisable) -> None:
        if unraisable.exc_value is not None and _disk_full(unraisable.exc_value):
            return
        previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous


def _extract_distributed(p: Plan, *, batch_size: int, dtype: str, quiet: bool, **run_kw) -> Path:
    """Each rank extracts a contiguous run of whole batches into a shard; rank 0 merges."""
    import torch.distributed as dist

    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group(backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    lock = None
    try:
        # rank 0 holds the entry lock throughout; the others follow its decisions
        decision = [None]
        if rank == 0:
            if not cache.is_complete(p.path):
                lock = cache.entry_lock(p.path, quiet=quiet)
                lock.__enter__()
            decision = ["hit" if cache.is_complete(p.path) else "run"]
        dist.broadcast_object_list(decision, src=0)
        if decision[0] == "hit":
            return p.path
        n = len(p.dataset)
        start, stop = shard_range(n, batch_size, rank, world)
        shard = p.path.with_name(f"{p.path.name}.rank{rank}-of-{world}.shard")
        status, own_error = None, None
        try:
            if not cache.is_complete_shard(shard):
                w = cache.FeatureWriter(shard, attrs={**p.attrs, "batch_size": batch_size, "shard_start": start, "shard_stop": stop},
                                        total=stop - start, dim=p.backbone.feature_dim, dtype=dtype,
                                        partial_path=shard.with_name(shard.name + cache.PARTIAL))
                try:
                    done = w.committed_positions
                    _run_positions(p, w, start + done, stop, batch_size=batch_size,
                                   desc=f"rank {rank}/{world} {p.backbone.name} {p.attrs['dataset']}:{p.attrs['split']}",
                                   **{**run_kw, "progress": run_kw["progress"] and rank == 0})
                    w.finish()
                finally:
                    w.close()
        except BaseException as e:  # every rank must reach the gather below, or the others hang
            own_error = e
            status = ("user", str(e)) if isinstance(e, UserError) else ("bug", f"rank {rank} failed: {type(e).__name__}: {e}")
        statuses: list = [None] * world
        dist.all_gather_object(statuses, status)
        if own_error is not None and not isinstance(own_error, UserError):
            raise own_error
        failed = [s for s in statuses if s]
        if failed:
            kind, message = failed[0]
            raise UserError(message) if kind == "user" else RuntimeError(message)
        result = [None]
        if rank == 0:
            shards = [p.path.with_name(f"{p.path.name}.rank{r}-of-{world}.shard") for r in range(world)]
            try:
                cache.merge_shards(shards, p.path, attrs={**p.attrs, "batch_size": batch_size, "world_size": world},
                                   total=n, dim=p.backbone.feature_dim, dtype=dtype)
                result = ["ok"]
            except BaseException as e:
                result = [f"merging shards failed: {e}"]
                raise
            finally:
                dist.broadcast_object_list(result, src=0)
        else:
            dist.broadcast_object_list(result, src=0)
            if result[0] != "ok":
                raise RuntimeError(str(result[0]))
        return p.path
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)
        if owned:
            dist.destroy_process_group()
