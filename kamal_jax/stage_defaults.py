"""Default stage settings for configs: every field a stage reads, so any is overridable by flag.

    c.stage1 = stage_defaults.stage1(arch='cifar_resnet20', epochs=30)
"""

from __future__ import annotations

_COMMON = dict(widths=(), epochs=30, batch_size=64, lr=1e-3, bridge_lr=1e-3, schedule='cosine',
               warmup_steps=0, weight_decay=0.0, feature_weight=1.0, logit_weight=1.0,
               logit_loss='mse', temperature=1.0, tap_pairs={}, checkpoint_every=200,
               checkpoint_min_interval_s=60.0)
# How the training images reach the step (`kamal_jax.data.records`, `kamal_jax.train.input`):
# streaming 'auto' reads a split from ArrayRecord files on disk when its decoded pixels exceed
# memory_limit_gb ('always' / 'never' force it); prefetch batches are gathered ahead on worker
# threads (-1: 4 where the images come from disk or the devices are accelerators, else 0);
# train_records, a records folder, replaces the train split as the unlabelled images.
INPUT = dict(streaming='auto', memory_limit_gb=4.0, prefetch=-1, train_records='')
# Your own images (`kamal_jax.data.folder`): train_folder, a folder of image files, replaces the
# TFDS training split; eval_folder, a labelled class-per-subfolder folder, replaces the evaluation
# split; without one, a seeded holdout_fraction of train_folder is held out and scored without labels.
# Read through `config_checks.folder_fields`: a config may leave them out.
FOLDERS = dict(train_folder='', eval_folder='', holdout_fraction=0.1)
# The frozen nets' output caches (fixed views only: data.crop_padding = 0 and no flip, or data.views = K).
CACHE = dict(cache_dtype='float16', cache_limit_gb=8.0)


def stage1(**overrides) -> dict:
    """Extraction: selection per sample, bridges on both sides, weight-norm on the teacher side.

    `selector` (kamal_jax.selection.SELECTORS) says which teacher each sample learns from;
    `selection` where it runs: 'online' in the step on the view the student sees, 'offline' once.
    """
    return {**_COMMON, 'weight_norm': 1.0, 'selection': 'online', 'selector': 'least_entropy',
            'bridge_width_ratio': 0.5, 'teacher_cache': False, **CACHE, **overrides}


def stage2(**overrides) -> dict:
    """Amalgamation: target-side bridges onto each component's features."""
    return {**_COMMON, 'component_cache': False, **CACHE, **overrides}


def shrink_to_reduced(c, *, images: int = 10000, epochs: int = 5) -> None:
    """The benchmarks' `:reduced` budget, the recipe x selector matrix's (docs/BENCHMARKS.md): a seeded
    subset of the training images and fewer epochs per stage, so that a recipe takes tens of minutes
    on a CPU core rather than hours. The zoo, its data and the held-out split stay as in the full
    config, so the teachers are the full benchmark's."""
    c.data.train_limit = images
    c.stage1.epochs = c.stage2.epochs = epochs
    c.baselines = ('average', 'product', 'one_stage')


def shrink_to_tiny(c, *, batch_size: int = 32) -> None:
    """The benchmarks' `:tiny` smoke version: one epoch everywhere, small batches."""
    for t in c.zoo.teachers.values():
        t.epochs, t.batch_size = 1, batch_size
    c.stage1.epochs = c.stage2.epochs = 1
    c.stage1.batch_size = c.stage2.batch_size = batch_size
    c.baseline_stage.epochs = 1
    c.eval_batch_size = 128
    c.log_every = 5
