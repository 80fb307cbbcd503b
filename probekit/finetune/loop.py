"""The full fine-tuning loop: one whole network per (lr, seed), evaluated every N steps.

Each evaluation appends one run record (see `probekit.runlog`) with ID accuracy, accuracy on
every OOD set and, with a baseline, effective robustness. Checkpoints are written at every
epoch end, at the last step, and when SIGTERM / Ctrl-C asks the run to stop (after the
current step). Data order, augmentation, dropout and the learning rate are pure functions of
(seed, epoch, step), so ``resume=True`` continues a killed run and produces the same log.

``predictions.npz`` (`probekit.records.write_predictions`) holds each model's predicted classes
on every OOD set: at its final step (``save_predictions="end"``), or at every evaluation of the
log (``"every-eval"``). Until the run ends they wait beside the checkpoint, one atomically
written file per model (and step), written before the checkpoint that covers them, so a resumed
run keeps exactly those of the evaluations its truncated log keeps.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from probekit.errors import UserError
from probekit.finetune import ddp
from probekit.finetune.checkpoint import (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, BackgroundSaver, checkpoint_path, load_checkpoint,
                                          save_checkpoint)
from probekit.finetune.data import (ImageEvalSet, Normalize, ResizeCenterCrop, RowView, SeededSamples, StepBatches, TrainTransform,
                                    check_dataset_labels, eval_rows)
from probekit.finetune.recipes import Recipe, default_recipe, get_recipe, lr_at
from probekit.names import parse_dataset_split
from probekit.runtime import PRECISIONS, Stopped, StopRequest, autocast, autocast_dtype, precision_name  # noqa: F401  (Stopped, PRECISIONS: the API)

log = logging.getLogger(__name__)
SAVE_PREDICTIONS = ("end", "every-eval")   # predictions.npz: each model's final step, or every evaluation of the log
_PART = re.compile(r"predictions-(\d+)(?:-step-(\d+))?\.npz")


@dataclass
class FinetuneConfig:
    """Everything a fine-tuning run needs; None means "the recipe's value"."""

    model: str
    train: str                        # "DATASET:SPLIT" or "DATASET" (split "train")
    out: str
    id_test: str | None = None        # default: the train dataset's "test" split
    ood: list[str] = field(default_factory=list)
    weights: str = "default"          # "default" (published), "none" (random init) or a path
    recipe: str | None = None
    epochs: int | None = None
    lrs: list[float] | None = None
    seeds: list[int] | None = None
    batch_size: int | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    schedule: str | None = None
    augmentation: str | None = None
    image_size: int | None = None
    eval_every: int | None = None     # steps; default once per epoch
    eval_subset: int | None = None    # images per class in a fixed class-balanced eval subset
    subset: str | None = None         # training subset, e.g. "per-class=50" or "cscore=hardest:500" (class-balanced)
    subset_seed: int = 0
    cscores: str | None = None        # C-score file for cscore= subsets
    eval_batch_size: int = 256
    baselines: list[str] = field(default_factory=list)   # "NAME_OR_PATH" (all OOD sets) or "OOD_SET=NAME_OR_PATH"
    max_steps: int | None = None
    precision: str = "auto"
    channels_last: bool | None = None  # default: on for CUDA
    device: str | None = None
    workers: int = 0
    data_root: str | None = None
    resume: bool = False
    overwrite: bool = False
    save_model: bool = False
    save_predictions: str = "end"     # predictions.npz at each model's final step ("end") or at every evaluation ("every-eval")
    progress: bool = True
    record_extra: dict = field(default_factory=dict)  # added to config.json and every record (an ablation cell's spec)


def _step_seed(seed: int, step: int, rank: int) -> int:
    return ((int(seed) * 1_000_003 + int(step)) * 131 + int(rank)) % (2**63 - 1)


class _Evaluator:
    """Accuracy of the current network on every view of the evaluation plan (`probekit.records`).

    The records themselves come from `records.evaluation_records`, as in every other mode."""

    def __init__(self, sets: dict[str, ImageEvalSet], shifts: dict, normalize, dist, device, amp, keep=()):
        self.sets = sets        # plan key -> ImageEvalSet (ID, each OOD set, each class-restricted ID view)
        self.shifts = shifts    # plan key -> (ClassSubsetShift, "ood" | "id") for shifted views
        self.normalize, self.dist, self.device, self.amp = normalize, dist, device, amp
        self.keep = tuple(keep)  # OOD sets whose predictions the accuracy pass keeps (one process: it sees every row)
        self.kept: dict[str, np.ndarray] = {}

    def _predictions(self, net, evalset: ImageEvalSet, shift, rank: int, world: int):
        from probekit.robustness.shifts import predict_shift

        with autocast(self.device, self.amp):
            for x, y in evalset.batches(rank, world):
                yield predict_shift(net(self.normalize(x.to(self.device, non_blocking=True))).float(), shift), y

    def _accuracy(self, net, key: str) -> float:
        """Top-1 accuracy; with a class-subset shift, in the shift's label space (ID view: ImageNet labels mapped)."""
        shift, on = self.shifts.get(key, (None, "ood"))
        correct = torch.zeros(2, dtype=torch.float64, device=self.device)
        keep = [] if key in self.keep and self.dist.world == 1 else None
        for pred, y in self._predictions(net, self.sets[key], shift, self.dist.rank, self.dist.world):
            if keep is not None:
                keep.append(pred.cpu())
            if on == "id":
                y = torch.as_tensor(shift.map_id_labels(y))
            correct[0] += (pred == y.to(self.device)).sum()
            correct[1] += y.numel()
        ddp.all_sum(self.dist, correct)
        if keep is not None:
            self.kept[key] = torch.cat(keep).numpy() if keep else np.zeros(0, np.int64)
        total = float(correct[1])
        return float(correct[0]) / total if total else float("nan")

    @torch.no_grad()
    def __call__(self, net) -> dict[str, float]:
        was_training = net.training
        net.eval()
        self.kept = {}
        try:
            return {key: self._accuracy(net, key) for key in self.sets}
        finally:
            net.train(was_training)

    def predictions(self, net, names) -> dict[str, np.ndarray]:
        """The predictions of `names` at the evaluation just made: kept from its pass, or predicted again (DDP)."""
        if all(name in self.kept for name in names):
            return {name: self.kept[name] for name in names}
        return self.predict(net, names)

    @torch.no_grad()
    def predict(self, net, names) -> dict[str, np.ndarray]:
        """Predicted classes [N] (OOD label space) of every row of the OOD sets `names`, on this process alone."""
        was_training = net.training
        net.eval()
        try:
            return {name: torch.cat([p.cpu() for p, _ in self._predictions(net, self.sets[name], self.shifts.get(name, (None,))[0], 0, 1)]).numpy()
                    for name in names}
        finally:
            net.train(was_training)


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Run every (lr, seed) combination of `cfg`; returns the summary written to ``summary.json``.

    Raises `Stopped` after checkpointing when SIGTERM / Ctrl-C interrupts the run.
    """
    dist, device = ddp.setup(cfg.device)
    try:
        return _Run(cfg, dist, device).run()
    finally:
        ddp.teardown(dist)


def _training_rows(train_set, cfg: FinetuneConfig):
    """The training set itself, or its class-balanced `--subset` (data-size and C-score ablations)."""
    if cfg.cscores and not cfg.subset:
        raise UserError("--cscores is only used with --subset cscore=...; add a --subset or drop --cscores")
    from probekit.datasets.subsets import load_cscores, parse_subset_spec, select_subset, warn_if_one_class

    if not cfg.subset:
        warn_if_one_class(train_set.targets, f"the training set {cfg.train}")
        return train_set

    if "classes" in parse_subset_spec(cfg.subset):
        raise UserError(f"--subset {cfg.subset}: the class-diversity ablation runs on cached features with "
                        "`probekit train-head --subset classes=K`; finetune takes per-class= and cscore= subsets")
    targets = np.asarray(train_set.targets)
    cscores = load_cscores(cfg.cscores, targets) if cfg.cscores else None
    rows = select_subset(targets, cfg.subset, seed=cfg.subset_seed, cscores=cscores)
    warn_if_one_class(targets[rows], f"the training set {cfg.train} (--subset {cfg.subset})")
    return RowView(train_set, rows)


class _Run:
    def __init__(self, cfg: FinetuneConfig, dist: ddp.Dist, device: torch.device):
        from probekit.backbones import create_classifier
        from probekit.datasets import create_dataset

        self.cfg, self.dist, self.device = cfg, dist, device
        if dist.is_main:
            from probekit.runlog import check_out

            check_out(cfg.out, overwrite=cfg.overwrite, resume=cfg.resume)  # before models and data are built
        if cfg.eval_every is not None and cfg.eval_every < 1:
            raise UserError(f"--eval-every must be a positive number of steps, got {cfg.eval_every}")
        if cfg.max_steps is not None and cfg.max_steps < 1:
            raise UserError(f"--max-steps must be positive, got {cfg.max_steps}")
        if cfg.save_predictions not in SAVE_PREDICTIONS:
            raise UserError(f"--save-predictions must be one of {', '.join(SAVE_PREDICTIONS)}, got {cfg.save_predictions!r}")
        train_name, train_split = parse_dataset_split(cfg.train, "train")
        id_name, id_split = parse_dataset_split(cfg.id_test or train_name, "test")
        self.train_set = create_dataset(train_name, train_split, root=cfg.data_root)
        num_classes = len(self.train_set.classes)
        check_dataset_labels(self.train_set, num_classes, "training set")
        self.train_items = _training_rows(self.train_set, cfg)

        pretrained = str(cfg.weights) != "none"
        overrides = dict(epochs=cfg.epochs, lrs=tuple(cfg.lrs) if cfg.lrs else None,
                         seeds=tuple(cfg.seeds) if cfg.seeds is not None and len(cfg.seeds) else None,
                         batch_size=cfg.batch_size, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                         schedule=cfg.schedule, augmentation=cfg.augmentation, image_size=cfg.image_size)
        self.recipe: Recipe = get_recipe(cfg.recipe or default_recipe(train_name, pretrained), **overrides)
        r = self.recipe
        if r.batch_size % dist.world:
            raise UserError(f"batch size {r.batch_size} does not split over {dist.world} processes; pass a multiple of {dist.world}")
        self.combos = [(float(lr), int(seed)) for lr in r.lrs for seed in r.seeds]

        torch.manual_seed(self.combos[0][1])
        self.first = create_classifier(cfg.model, num_classes, cfg.weights, image_size=r.image_size)
        size = int(self.first.input_size)
        self.amp = autocast_dtype(cfg.precision, device)
        self.channels_last = device.type == "cuda" if cfg.channels_last is None else cfg.channels_last
        self.normalize = Normalize(self.first.mean, self.first.std, self.channels_last).to(device)
        self.train_transform = TrainTransform(size, r.augmentation, r.crop_padding)

        eval_tf = ResizeCenterCrop(size, r.test_resize)
        id_ds = create_dataset(id_name, id_split, root=cfg.data_root, transform=eval_tf)
        check_dataset_labels(id_ds, num_classes, "ID test set")
        if id_ds.label_space != self.train_set.label_space:
            raise UserError(f"ID test set {id_name}:{id_split} has label space {id_ds.label_space!r}, the training set "
                            f"{self.train_set.label_space!r}; evaluate on a split of the same label space")
        from probekit.robustness.shifts import check_label_space

        ood_sets, shifts = [], {}
        seen = {f"{id_name}:{id_split}": "the ID test set"}
        for spec in cfg.ood:
            o_name, o_split = parse_dataset_split(spec, "test")
            name = f"{o_name}:{o_split}"
            if name in seen:
                raise UserError(f"--ood {spec} is {seen[name]} ({name}); OOD sets must be other datasets or splits "
                                "than the ID test set and each other")
            seen[name] = "given twice"
            ds = create_dataset(o_name, o_split, root=cfg.data_root, transform=eval_tf)
            shift = check_label_space(self.train_set.label_space, num_classes, name, ds.label_space, len(ds.classes))
            if shift is None:
                check_dataset_labels(ds, num_classes, "OOD set")
            else:  # an ImageNet-1k network on ImageNet-R / ObjectNet: scored on the shift's classes
                shifts[name] = shift
            ood_sets.append(ImageEvalSet(name, ds, eval_rows(ds, cfg.eval_subset), workers=cfg.workers, batch_size=cfg.eval_batch_size))
        id_rows = eval_rows(id_ds, cfg.eval_subset)
        self.id_set = ImageEvalSet(f"{id_name}:{id_split}", id_ds, id_rows, workers=cfg.workers, batch_size=cfg.eval_batch_size)
        from probekit.records import EvalPlan, class_subset_view, match_baselines, plan_config, with_baselines

        id_targets = np.asarray(id_ds.targets)[id_rows]
        views = [class_subset_view(o.name, o.n, shifts.get(o.name), id_targets, self.id_set.name) for o in ood_sets]
        sets = {self.id_set.name: self.id_set, **{o.name: o for o in ood_sets}}
        view_shifts = {name: (shift, "ood") for name, shift in shifts.items()}
        for v in views:
            if v.id_key:  # the ID view the testbed plots against this set: val restricted to its classes
                sets[v.id_key] = ImageEvalSet(f"{self.id_set.name}[{v.shift.id_eval}]", id_ds, id_rows[v.shift.id_mask(id_targets)],
                                         workers=cfg.workers, batch_size=cfg.eval_batch_size)
                view_shifts[v.id_key] = (v.shift, "id")
        baselines = match_baselines(list(cfg.baselines), [o.name for o in ood_sets], cache_dir=None)
        self.plan = with_baselines(EvalPlan(self.id_set.name, self.id_set.n, tuple(views)), baselines)
        self.ood_names = [o.name for o in ood_sets]
        self.every_eval = cfg.save_predictions == "every-eval"
        self.evaluate = _Evaluator(sets, view_shifts, self.normalize, dist, device, self.amp,
                                   keep=self.ood_names if self.every_eval and dist.is_main else ())

        self.steps_per_epoch = len(self.train_items) // r.batch_size
        if self.steps_per_epoch < 1:
            raise UserError(f"batch size {r.batch_size} exceeds the {len(self.train_items)} training images; pass a smaller --batch-size")
        self.total_steps = r.epochs * self.steps_per_epoch  # the schedule's length, independent of --max-steps
        self.target = min(self.total_steps, cfg.max_steps or self.total_steps)
        self.eval_every = cfg.eval_every or self.steps_per_epoch
        self.config = json.loads(json.dumps({
            "mode": "finetune", "model": cfg.model, "weights": str(cfg.weights), "weight_id": self.first.weight_id,
            "train": f"{train_name}:{train_split}", "subset": cfg.subset, "subset_seed": cfg.subset_seed if cfg.subset else None,
            "n_train": len(self.train_items), **plan_config(self.plan),
            "num_classes": num_classes, "input_size": size, "mean": list(self.first.mean), "std": list(self.first.std),
            "recipe": r.to_dict(), "eval_every": self.eval_every, "eval_subset": cfg.eval_subset,
            "precision": precision_name(self.amp), "save_predictions": cfg.save_predictions,
            "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps, **cfg.record_extra,
        }, default=str))
        self.run_info = {"max_steps": cfg.max_steps, "device": str(device), "world_size": dist.world,
                         "channels_last": self.channels_last, "workers": cfg.workers}
        self.ckpt = checkpoint_path(cfg.out)
        self.saver = BackgroundSaver()

    # ---- bookkeeping -------------------------------------------------------------------------
    def _head(self, lr: float, seed: int) -> str:
        return f"lr={lr:g},seed={seed}"

    def _open_log(self):
        """Checkpoint check and run-folder opening; returns (writer, start combo, start step, state)."""
        from probekit.runlog import RunWriter, is_complete

        cfg, state = self.cfg, None
        exists = self.ckpt.exists()
        if exists and not cfg.resume and not cfg.overwrite and not is_complete(cfg.out):
            raise UserError(f"{cfg.out} holds the checkpoint of an unfinished run; pass --resume to continue it "
                            f"or --overwrite to start afresh")
        if exists and cfg.resume:
            state = load_checkpoint(self.ckpt, self.config)  # UserError on another configuration, file untouched
        writer = None
        if self.dist.is_main:
            writer = RunWriter(cfg.out, {**self.config, "run": self.run_info}, resume=cfg.resume, overwrite=cfg.overwrite)
            self.ckpt = checkpoint_path(writer.dir)  # a replacing run checkpoints in its own (staging) folder
        if self.dist.is_main:  # prediction parts of evaluations the run will redo are stale
            first, upto = (int(state["combo"]), int(state["step"])) if state is not None else (0, -1)
            for part in self.ckpt.parent.glob("predictions-*.npz"):
                m = _PART.fullmatch(part.name)
                k = int(m[1]) if m else None
                if k is None or k > first or (k == first and (m[2] is None or int(m[2]) > upto)):
                    part.unlink()
            for tmp in self.ckpt.parent.glob(".predictions-*.tmp"):  # a write a kill interrupted (never renamed)
                tmp.unlink()
        ddp.barrier(self.dist)
        if state is None:
            if writer is not None and cfg.resume:
                writer.truncate(lambda rec: False)
            return writer, 0, 0, None
        combo, step = int(state["combo"]), int(state["step"])
        done = {self._head(*c) for c in self.combos[:combo]}
        current = self._head(*self.combos[combo])
        if writer is not None:
            writer.truncate(lambda rec: rec.get("head") in done or (rec.get("head") == current and rec.get("step", 0) <= step))
        return writer, combo, step, state

    def run(self) -> dict[str, Any]:
        writer, start_combo, start_step, state = self._open_log()
        started = time.time()
        images, self.train_s, self.eval_s = 0, 0.0, 0.0
        pbar = None
        if self.dist.is_main and self.cfg.progress:
            from probekit.progress import progress_bar

            pbar = progress_bar(total=len(self.combos) * self.target, initial=start_combo * self.target + min(start_step, self.target),
                        unit="step", desc="finetune")
        try:
            with StopRequest() as stop:
                for k in range(start_combo, len(self.combos)):
                    first_step = start_step if k == start_combo else 0
                    _, n = self._train_one(k, first_step, state if k == start_combo else None, writer, stop, pbar)
                    images += n
                    state = None
        except BaseException:
            try:
                self.saver.wait()  # never leave a checkpoint half-way; a failed write keeps the previous one
            except Exception:
                pass
            if writer is not None:
                writer.close()  # the log stays as written: incomplete, resumable
            raise
        finally:
            if pbar is not None:
                pbar.close()
        elapsed = time.time() - started
        extra = {"steps": self.target, "wall_s": elapsed, "train_s": self.train_s, "eval_s": self.eval_s, "train_images": images,
                 "train_images_per_s": images / self.train_s if self.train_s > 0 else None, "checkpoint": str(self.ckpt)}
        summary = {"mode": "finetune", **extra}
        if writer is not None:
            from probekit.records import summarise_run, write_predictions
            from probekit.runlog import LOG_FILE, read_records

            heads = [self._head(*c) for c in self.combos]
            records = list(read_records(writer.dir / LOG_FILE))
            summary = summarise_run(records, self.plan, mode="finetune", heads=heads, extra=extra)
            predictions = self._run_predictions(records) if self.ood_names else None
            if predictions is not None:
                write_predictions(writer.dir, predictions)
            writer.finish(summary)
        ddp.barrier(self.dist)
        return summary

    # ---- one (lr, seed) ----------------------------------------------------------------------
    def _build(self, k: int):
        from probekit.backbones import create_classifier

        lr, seed = self.combos[k]
        if k == 0 and self.first is not None:
            clf, self.first = self.first, None
        else:
            torch.manual_seed(seed)
            clf = create_classifier(self.cfg.model, self.config["num_classes"], self.cfg.weights, image_size=self.recipe.image_size)
        model = clf.model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        model.train()
        return model

    def _save(self, k: int, step: int, model, opt, scaler, loss_sum, loss_count) -> None:
        if not self.dist.is_main:
            return
        self.saver.submit(self.ckpt, {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
            "config": json.dumps(self.config), "combo": k, "head": self._head(*self.combos[k]), "step": step,
            "model": model.state_dict(), "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
            "loss_sum": loss_sum.detach().cpu(), "loss_count": loss_count,
        })

    def _train_one(self, k: int, start: int, state: dict | None, writer, stop: StopRequest, pbar) -> tuple[dict, int]:
        cfg, r, dist, device = self.cfg, self.recipe, self.dist, self.device
        lr, seed = self.combos[k]
        head = self._head(lr, seed)
        model = self._build(k)
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=r.momentum, weight_decay=r.weight_decay)
        scaler = torch.amp.GradScaler(device.type, enabled=self.amp == torch.float16)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        loss_count = 0
        if state is not None:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            if state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            loss_sum = state["loss_sum"].to(device=device, dtype=torch.float64)
            loss_count = int(state["loss_count"])
        net = model
        if dist.enabled:
            net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
        from probekit.records import evaluation_records

        fields = [{"head": head, "lr": lr, "seed": seed}]
        extra = ({"eval_subset": int(cfg.eval_subset)} if cfg.eval_subset else {}) | dict(cfg.record_extra)
        t0 = time.time()
        last: dict[str, Any] = {}

        def record(step: int) -> dict:
            nonlocal loss_sum, loss_count
            t_eval = time.perf_counter()
            stats = torch.stack([loss_sum, torch.tensor(float(loss_count), dtype=torch.float64, device=device)])
            ddp.all_sum(dist, stats)
            loss = float(stats[0] / stats[1]) if float(stats[1]) else None
            rec = evaluation_records(self.plan, self.evaluate(model), step=step, epoch=step / self.steps_per_epoch, heads=fields,
                                     mode="finetune", loss=loss,
                                     extra={**extra, "lr_now": lr_at(max(step - 1, 0), lr, self.total_steps, r.schedule),
                                            "time_s": time.time() - t0})[0]
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            loss_count = 0
            if writer is not None:
                writer.log(rec)
            if self.every_eval and dist.is_main:  # before the checkpoint that covers this step
                self._write_part(k, step, self.evaluate.predictions(model, self.ood_names), self._predictions_part(k, step))
            if pbar is not None:
                pbar.set_postfix(acc_id=f"{rec['acc_id']:.3f}", refresh=False)
            self.eval_s += time.perf_counter() - t_eval
            return rec

        if start == 0:
            last = record(0)
        n_images = 0
        t_train, eval_before = time.perf_counter(), self.eval_s
        if start < self.target:
            sampler = StepBatches(len(self.train_items), r.batch_size, seed, start, self.target, rank=dist.rank, world=dist.world)
            loader = torch.utils.data.DataLoader(
                SeededSamples(self.train_items, self.train_transform), batch_sampler=sampler, num_workers=cfg.workers,
                pin_memory=device.type == "cuda", persistent_workers=False)
            group = opt.param_groups[0]
            ce = torch.nn.functional.cross_entropy
            step = start
            for x, y in loader:
                group["lr"] = lr_at(step, lr, self.total_steps, r.schedule)
                x = self.normalize(x.to(device, non_blocking=True))
                y = y.to(device, non_blocking=True)
                torch.manual_seed(_step_seed(seed, step, dist.rank))  # dropout etc.: same on resume
                with autocast(device, self.amp):
                    loss = ce(net(x), y)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                loss_sum += loss.detach()
                loss_count += 1
                step += 1
                n_images += y.numel()
                if step % self.eval_every == 0 or step == self.target:
                    last = record(step)
                saved = False
                if step % self.steps_per_epoch == 0 or step == self.target:
                    self._save(k, step, model, opt, scaler, loss_sum, loss_count)
                    saved = True
                if pbar is not None:
                    pbar.update(1)
                if ddp.any_true(dist, stop.requested, device):
                    if not saved:
                        self._save(k, step, model, opt, scaler, loss_sum, loss_count)
                    self.saver.wait()
                    if writer is not None and writer.replacing:  # the unfinished replacement is discarded
                        raise stop.stopped(f"step {step} of {head}", f"the previous run in {cfg.out} is kept as it was; "
                                           "rerun the same command (with --overwrite) to replace it")
                    raise stop.stopped(f"step {step} of {head}",
                                       f"checkpoint saved to {self.ckpt}; rerun the same command with --resume to continue")
        self.saver.wait()  # the last checkpoint is on disk before the run moves on or finishes
        # training time: the loop with its record keeping and checkpoints, without evaluations
        self.train_s += time.perf_counter() - t_train - (self.eval_s - eval_before)
        if not last:  # resumed at the target: the final record is already in the log
            last = {"step": self.target}
        if dist.is_main and not self.every_eval:
            self._save_predictions(k, model)
        if cfg.save_model and dist.is_main:
            save_checkpoint(Path(cfg.out) / f"model_{head.replace('=', '').replace(',', '_')}.pt", model.state_dict())
        return last, n_images * dist.world

    def _predictions_part(self, k: int, step: int | None = None) -> Path:
        """Model k's predictions beside the checkpoint: its final ones, or those of the evaluation at `step`."""
        return self.ckpt.parent / (f"predictions-{k}.npz" if step is None else f"predictions-{k}-step-{step:08d}.npz")

    def _write_part(self, k: int, step: int, predicted: dict[str, np.ndarray], path: Path) -> None:
        """One evaluation's predicted classes on every OOD set (all its rows), in the predictions.npz layout, atomically."""
        from probekit.records import Predictions, write_predictions

        if not self.ood_names:
            return
        preds = Predictions(heads=[self._head(*self.combos[k])])
        preds.add(step, {name: np.asarray(predicted[name])[None] for name in self.ood_names})
        preds.index = {name: self.evaluate.sets[name].rows for name in self.ood_names}
        write_predictions(path, preds)

    def _save_predictions(self, k: int, model) -> None:
        """The final model's predicted classes on every OOD set, kept beside the checkpoint until the run ends."""
        if self.ood_names and not self._predictions_part(k).exists():
            self._write_part(k, self.target, self.evaluate.predict(model, self.ood_names), self._predictions_part(k))

    def _run_predictions(self, records: list[dict]):
        """The run's predictions.npz content: every model's parts, steps in log order, heads in run order.

        With ``every-eval`` each model needs the part of every step its log holds; a missing one
        (a part deleted by hand) leaves the run without predictions.npz rather than with a file
        that silently lacks evaluations."""
        from probekit.records import Predictions, merge_predictions, read_predictions

        models = []
        for k, combo in enumerate(self.combos):
            head = self._head(*combo)
            steps = [r["step"] for r in records if r.get("head") == head] if self.every_eval else [None]
            paths = [self._predictions_part(k, s) for s in steps]
            missing = [p.name for p in paths if not p.exists()]
            if missing or not paths:
                log.warning("no predictions.npz written: %s lacks %s of %s", self.ckpt.parent, ", ".join(missing[:3]) or "every part", head)
                return None
            parts = [read_predictions(p) for p in paths]
            models.append(Predictions([s for p in parts for s in p.steps], list(parts[0].heads),
                                      {name: [a for p in parts for a in p.sets[name]] for name in parts[0].sets}, dict(parts[0].index)))
        if any(m.steps != models[0].steps for m in models):
            log.warning("no predictions.npz written: the models of %s were evaluated at different steps", self.cfg.out)
            return None
        return merge_predictions(models)
