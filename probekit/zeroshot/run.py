"""`probekit zero-shot` as a Python call: resolve features, build the head, write the run folder."""

from __future__ import annotations

import os
from typing import Any

from probekit.errors import UserError
from probekit.zeroshot.classnames import load_classes
from probekit.zeroshot.evaluate import ZeroShotResult, write_zero_shot_run
from probekit.zeroshot.head import check_feature_kind, zero_shot_head


def run_zero_shot(model: str, classes: str, id_spec: str, ood_specs: list[str] = (), *, out: str | os.PathLike,
                  weights: str | os.PathLike = "default", templates: str | os.PathLike | None = None,
                  baseline: Any = None, cache_dir: str | os.PathLike | None = None, device: Any = None,
                  overwrite: bool = False, use_text_cache: bool = True) -> ZeroShotResult:
    """Evaluate CLIP `model`'s zero-shot head for `classes` on cached features; write a run folder at `out`.

    Feature specs are ``dataset:split`` (looked up for `model` + `weights` in the feature store)
    or paths to feature files. Returns the result whose `record` is the run's only record.
    """
    from probekit.cache import check_same_source, provenance
    from probekit.features import resolve_features
    from probekit.runlog import check_out

    check_out(out, overwrite=overwrite, cache_dir=cache_dir)  # before minutes of text encoding
    class_list = load_classes(classes, templates)
    kw = {} if str(weights) == "default" else {"weights": str(weights)}
    id_set = resolve_features(id_spec, model=model, cache_dir=cache_dir, **kw)
    ood_sets = [resolve_features(s, model=model, cache_dir=cache_dir, **kw) for s in ood_specs]
    names = [fs.name for fs in [id_set, *ood_sets]]
    if len(set(names)) != len(names):
        raise UserError(f"the same set is given twice ({', '.join(names)}); pass each --id / --ood set once")
    roles = [("ID", id_set)] + [("OOD", fs) for fs in ood_sets]
    check_same_source(roles)  # one extraction for all sets: backbone, weights, transform, feature kind, precision
    for role, fs in roles:
        check_feature_kind(fs, f"{role} set {fs.name}", model)  # fail before minutes of text encoding
    from probekit.records import match_baselines

    baselines = match_baselines(baseline or None, names[1:], cache_dir=cache_dir)  # a bad --baseline fails before text encoding
    head = zero_shot_head(model, class_list, weights=weights, cache_dir=cache_dir, device=device, use_cache=use_text_cache)
    extra = {"weights": id_set.attrs.get("weights") or str(weights),
             "inputs": {"id": provenance(id_set)} | {f"ood:{fs.name}": provenance(fs) for fs in ood_sets}, "text_cache_hit": head.cache_hit}
    return write_zero_shot_run(out, head, id_set, ood_sets, baseline=baselines, overwrite=overwrite, config_extra=extra,
                               cache_dir=cache_dir)
