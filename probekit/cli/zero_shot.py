"""`probekit zero-shot`: score CLIP's zero-shot classifier on cached image embeddings."""

from __future__ import annotations

import argparse

from probekit.cli import _common
from probekit.cli._common import add_cache_dir, add_device

ORDER = 25


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "zero-shot",
        help="evaluate a CLIP zero-shot head (class names -> text embeddings) on cached features",
        description="Build CLIP's zero-shot classifier from class names and prompt templates through the text "
        "encoder (weights = normalised class text embeddings, logits = logit_scale * image_embedding @ W) and score "
        "it on cached image embeddings like any trained head: one record at step 0 (acc_id, acc_ood, er) in a "
        "run folder. Features must be the projected CLIP image embedding of the same model and weights "
        "(`probekit extract --model clip-vit-b-32 ...`). Text embeddings are cached under <cache-dir>/text/.",
    )
    p.add_argument("--model", required=True, help="CLIP backbone, e.g. clip-vit-b-32 or open_clip:ARCH[:TAG]")
    p.add_argument("--weights", default="default", help="'default' (published weights) or a local checkpoint PATH")
    p.add_argument("--classes", required=True, metavar="imagenet|cifar10|FILE",
                   help="class names in label order: a built-in list or a text file with one name per line")
    p.add_argument("--templates", default=None, metavar="FILE",
                   help="prompt templates, one per line with '{}' for the class name (default: the CLIP paper's "
                   "templates for imagenet / cifar10, 'a photo of a {}.' for a class file)")
    p.add_argument("--id", required=True, metavar="SPEC", help="ID test features: dataset:split or a feature file")
    p.add_argument("--ood", nargs="*", default=[], metavar="SPEC", help="OOD test features: dataset:split or feature files")
    p.add_argument("--baseline", type=_common.baseline_spec, nargs="*", default=[], metavar="NAME|FILE|OOD_SET=NAME",
                   help="ER baseline: a named testbed fit or a JSON fit file (applied to the OOD sets it was fitted for), "
                        "or OOD_SET=BASELINE for one set")
    p.add_argument("--out", required=True, help="run folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace a complete run already in --out")
    p.add_argument("--no-text-cache", action="store_true", help="recompute the text embeddings instead of reading the cache")
    add_cache_dir(p)
    add_device(p)
    _common.add_json(p, "the zero-shot record")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from probekit.zeroshot.run import run_zero_shot

    result = run_zero_shot(args.model, args.classes, args.id, args.ood, out=args.out, weights=args.weights,
                           templates=args.templates, baseline=list(args.baseline), cache_dir=args.cache_dir,
                           device=args.device, overwrite=args.overwrite, use_text_cache=not args.no_text_cache)
    rec = result.record
    if args.json:
        _common.print_json(rec)
        return 0
    from probekit.records import results_table

    _common.print_table(results_table({f"zero-shot {args.model}": {"final": rec}}))
    print(f"-> {args.out}")
    return 0
