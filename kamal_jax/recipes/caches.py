"""The frozen nets' outputs cached on the training images, for a job to read instead of running them
(`train.job.Frozen.cached`): keyed by what the nets and the images are, built once by process 0."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kamal_jax.files import sha256, write_atomic
from kamal_jax.tasks import ConfigError
from kamal_jax.train import cache_policy, distributed, evaluate as eval_lib, teacher_cache, views as views_lib
from kamal_jax.train.nets import Net


def data_key(config: Any, images, views: int | None = None) -> dict:
    """What the training images are and how the frozen nets see them: part of every cache's key.
    `views` names a count of pre-drawn views other than `config.data`'s (the one-stage logits cache)."""
    d = config.data
    seen_as = d if views is None else views_lib.with_views(d, views)
    return {'data': {'name': d.name, 'split': d.train_split, 'size': len(images),
                     'train_limit': d.train_limit, 'seed': config.seed,
                     'image_size': list(d.image_size)},
            'views': views_lib.cache_key(seen_as, images.shape[1:])}


def net_key(net: Net, digest: str, widths) -> dict:
    return {'sha256': digest, 'arch': net.arch, 'widths': list(widths), 'mean': list(net.mean),
            'std': list(net.std), 'compute_dtype': str(net.dtype or 'float32')}


def load_cache(what, path, spec, frozen, images, config, cfg, turn_off, key, selected=None) -> dict:
    """The stage's cached frozen outputs on `images` (process 0 builds, the others then read); a cache
    over `cfg.cache_limit_gb` is one sentence naming the fields to change (`turn_off` switches it off)."""
    section = turn_off.split('.')[0]

    def build():
        try:
            return teacher_cache.load_or_build(
                path, spec=spec, frozen=frozen, images=images, key=key, selected=selected,
                batch_size=config.eval_batch_size, limit_gb=cfg.cache_limit_gb, feature_dtype=cfg.cache_dtype)
        except teacher_cache.CacheTooLarge as e:
            raise ConfigError(f'The {what} would take {e.nbytes / 2 ** 30:.2f} GiB, more than '
                              f'{section}.cache_limit_gb = {e.limit_gb:g}; raise the limit, use fewer or smaller '
                              f'images, or set {turn_off}.') from None
    return distributed.primary_first(build, f'building the {what.split(" of ")[0]}')


def _teachers_key(stage, plan, tasks) -> dict:
    specs = {t.name: t for task in tasks for t in plan.group(task)}
    return {'teachers': {t.name: net_key(t, sha256(specs[t.name].checkpoint), specs[t.name].widths)
                         for t in stage.teachers}}


def stage1_cache(task, plan, stage, frozen, train, config, path, selected=None) -> dict:
    """The teachers' cached outputs, keyed by their checkpoints' hashes."""
    key = {**_teachers_key(stage, plan, [task]), **data_key(config, train.images)}
    return load_cache(f'stage-1 teacher cache of task {task!r}', path, stage.cache_spec(), frozen, train.images,
                      config, config.stage1, 'stage1.teacher_cache = False', key, selected)


def stage2_cache(stage, frozen, train, config, path) -> dict:
    """The component nets' cached outputs, keyed by hashes of their trained variables."""
    key = {'components': {c.name: {**net_key(c, teacher_cache.variables_sha256(frozen[c.name]), c.widths),
                                   'task': task} for task, c in stage.components},
           **data_key(config, train.images)}
    return load_cache('stage-2 component cache', path, stage.cache_spec(), frozen, train.images,
                      config, config.stage2, 'stage2.component_cache = False', key)


def one_stage_cache(stage, plan, frozen, images, config, cfg, path, views: int) -> dict:
    """The teachers' cached task logits for a one-stage target (`Distill.cache_spec` with a combiner),
    on `images` as they are: the training split, or `views` pre-drawn views of each image."""
    key = {**_teachers_key(stage, plan, plan.target_tasks), **data_key(config, images, views)}
    return load_cache("teachers' logits cache", path, stage.cache_spec(cfg.cache_dtype), frozen, images,
                      config, cfg, "baseline_stage.logits_cache = 'off'", key)


def logits_cache_decision(run, cfg, stage, target: Net, dirs) -> cache_policy.Decision:
    """Whether the one-stage target reads its teachers' logits from a cache, and from how many views
    (`cache_policy.decide` on the run's FLOPs, epochs, sizes and device). Kept in
    `dirs.cache_decision`: a resumed run goes on as it started, whatever the machine it resumes on."""
    if os.path.exists(dirs.cache_decision) and os.path.isdir(dirs.checkpoints):
        with open(dirs.cache_decision) as f:
            stored = json.load(f)
        if stored.get('setting') == cfg.logits_cache:
            return cache_policy.Decision(**{**stored, 'why': stored['why'] + ' (as this run started)'})
    if cfg.logits_cache == 'off':  # nothing to weigh (and no FLOPs to count)
        return cache_policy.decide('off', teacher_flops=0, student_flops=0, epochs=0, augmented=False, views=0,
                                   bytes_per_view=0, limit_bytes=0, device_kind='')
    d = run.config.data
    image_shape = tuple(run.train.images.shape[1:])
    n = len(run.train.images) // max(views_lib.count(d), 1)
    target_shapes = jax.eval_shape(lambda: target.module.init(jax.random.key(0), jnp.zeros((1, *image_shape))))
    columns = sum(run.plan.tasks[task].num_classes for task, ts in stage.groups for _ in ts)
    decision = cache_policy.decide(
        cfg.logits_cache, needs_live='',
        teacher_flops=sum(eval_lib.forward_flops(t, run.frozen[t.name], image_shape) for t in stage.teachers),
        student_flops=eval_lib.forward_flops(target, target_shapes, image_shape), epochs=int(cfg.epochs),
        augmented=bool(d.crop_padding or d.flip), views=views_lib.count(d),
        bytes_per_view=n * columns * np.dtype(teacher_cache.FEATURE_DTYPES[cfg.cache_dtype]).itemsize,
        limit_bytes=int(cfg.cache_limit_gb * 2 ** 30),
        image_bytes_per_view=0 if views_lib.count(d) else n * int(np.prod(image_shape)),
        image_limit_bytes=int(d.memory_limit_gb * 2 ** 30), device_kind=jax.devices()[0].platform)
    if distributed.is_primary():
        os.makedirs(os.path.dirname(dirs.cache_decision), exist_ok=True)
        write_atomic(dirs.cache_decision, json.dumps(dataclasses.asdict(decision), indent=1).encode())
    return decision
