"""The frozen nets' outputs cached on the training images, for a job to read instead of running them
(`train.job.Frozen.cached`): keyed by what the nets and the images are, built once by process 0."""

from __future__ import annotations

from typing import Any

from kamal_jax.files import sha256
from kamal_jax.tasks import ConfigError
from kamal_jax.train import distributed, teacher_cache, views as views_lib
from kamal_jax.train.nets import Net


def data_key(config: Any, train) -> dict:
    """What the training images are and how the frozen nets see them: part of every cache's key."""
    d = config.data
    return {'data': {'name': d.name, 'split': d.train_split, 'size': len(train.images),
                     'train_limit': d.train_limit, 'seed': config.seed,
                     'image_size': list(d.image_size)},
            'views': views_lib.cache_key(d, train.images.shape[1:])}


def net_key(net: Net, digest: str, widths) -> dict:
    return {'sha256': digest, 'arch': net.arch, 'widths': list(widths), 'mean': list(net.mean),
            'std': list(net.std), 'compute_dtype': str(net.dtype or 'float32')}


def load_cache(what, path, spec, frozen, train, config, section, switch, key, selected=None) -> dict:
    """The stage's cached frozen outputs on the fixed views (process 0 builds, the others then read)."""
    cfg = config[section]

    def build():
        try:
            return teacher_cache.load_or_build(
                path, spec=spec, frozen=frozen, images=train.images, key={**key, **data_key(config, train)},
                selected=selected, batch_size=config.eval_batch_size, limit_gb=cfg.cache_limit_gb,
                feature_dtype=cfg.cache_dtype)
        except teacher_cache.CacheTooLarge as e:
            raise ConfigError(f'The {what} would take {e.nbytes / 2 ** 30:.2f} GiB, more than '
                              f'{section}.cache_limit_gb = {e.limit_gb:g}; raise the limit, use fewer or smaller '
                              f'images, or set {section}.{switch} = False.') from None
    return distributed.primary_first(build, f'building the {what.split(" of ")[0]}')


def stage1_cache(task, plan, stage, frozen, train, config, path, selected=None) -> dict:
    """The teachers' cached outputs, keyed by their checkpoints' hashes."""
    specs = {t.name: t for t in plan.group(task)}
    key = {'teachers': {t.name: net_key(t, sha256(specs[t.name].checkpoint), specs[t.name].widths)
                        for t in stage.teachers}}
    return load_cache(f'stage-1 teacher cache of task {task!r}', path,
                       stage.cache_spec(), frozen, train, config, 'stage1', 'teacher_cache', key, selected)


def stage2_cache(stage, frozen, train, config, path) -> dict:
    """The component nets' cached outputs, keyed by hashes of their trained variables."""
    key = {'components': {c.name: {**net_key(c, teacher_cache.variables_sha256(frozen[c.name]), c.widths),
                                   'task': task} for task, c in stage.components}}
    return load_cache('stage-2 component cache', path, stage.cache_spec(),
                       frozen, train, config, 'stage2', 'component_cache', key)
