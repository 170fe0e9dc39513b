"""Stage 2 from cached component outputs, and stage 1 storing only the selected teacher's features."""
import dataclasses
import logging
import os
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import toy
from kamal_jax import models, selection
from kamal_jax.recipes import caches, stages
from kamal_jax.tasks import ConfigError, Plan, Task, TeacherSpec
from kamal_jax.train import sharding, teacher_cache
from kamal_jax.train.nets import Net
from kamal_jax.train.objectives import Amalgamate, LossWeights, make_pairs
from kamal_jax.train.trainer import train_student

PLAN = types.SimpleNamespace(target_tasks=('a', 'b'), tasks={'a': types.SimpleNamespace(num_classes=5),
                                                             'b': types.SimpleNamespace(num_classes=4)})


def _components(seed=0):
    out = {}
    for i, (task, n) in enumerate((('a', 5), ('b', 4))):
        net = toy.student(task, n)
        out[task] = (net, net.module.init(jax.random.key(seed + i), jnp.zeros((1, 12, 12, 3))))
    return out


DATA = dict(name='toy', train_split='train', train_limit=0, image_size=(12, 12), mean=toy.MEAN, std=toy.STD,
            crop_padding=0, flip=False)


def _config(section='stage2', **fields):
    """A run config with one stage's fields (one epoch, float32 cache)."""
    stage = {**toy.stage_config(epochs=1).to_dict(), 'cache_dtype': 'float32', 'cache_limit_gb': 8.0, **fields}
    return toy.run_config(eval_batch_size=8, log_every=2, data=DATA, **{section: stage})


def _close(expected, got, rtol=1e-4, atol=1e-5):
    for x, y in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def test_cached_stage2_trains_like_running_the_components(tmp_path):
    comps = _components()
    train = types.SimpleNamespace(images=toy.images(20))  # eval batch 8: the cache's last chunk is padded
    mesh = sharding.make_mesh(1)
    _, expected, m_ref = stages.run_stage2(PLAN, comps, train, _config(component_cache=False), mesh,
                                             str(tmp_path / 'u'))
    _, got, m = stages.run_stage2(PLAN, comps, train, _config(component_cache=True), mesh, str(tmp_path / 'c'))
    assert not os.path.exists(tmp_path / 'u' / 'cache')
    cache = tmp_path / 'c' / 'cache' / 'stage2'
    assert {'cache__component_a__logits.npy', 'cache__component_b__stage3.npy'} <= set(os.listdir(cache))
    _close(expected, got)
    np.testing.assert_allclose(m['loss'], m_ref['loss'], rtol=1e-4)


def _stage2(comps):
    target = Net('target', 'cifar_resnet8', models.multihead('cifar_resnet8', [('a', 5), ('b', 4)]),
                 toy.MEAN, toy.STD)
    nets = tuple((task, net) for task, (net, _) in comps.items())
    return Amalgamate(target, nets, {n.name: make_pairs(n, target, None) for _, n in nets}, LossWeights(), cached=True)


def _mtime(path):
    return os.stat(os.path.join(path, teacher_cache.MANIFEST)).st_mtime_ns


def test_stale_stage2_cache_is_rebuilt(tmp_path):
    comps = _components()
    stage, config = _stage2(comps), _config(component_cache=True)
    train = types.SimpleNamespace(images=toy.images(8))
    frozen = {net.name: v for net, v in comps.values()}
    first = caches.stage2_cache(stage, frozen, train, config, str(tmp_path / 'cache' / 'stage2'))['cache/component_a/logits']
    first = np.array(first)
    path = tmp_path / 'cache' / 'stage2'
    built = _mtime(path)
    caches.stage2_cache(stage, frozen, train, config, str(tmp_path / 'cache' / 'stage2'))
    assert _mtime(path) == built  # same components: reused
    # One component trained further (other params, same shapes): its hash changes, the cache is rebuilt.
    moved = jax.tree.map(lambda x: x + 0.05, frozen['component_a'])
    again = caches.stage2_cache(stage, {**frozen, 'component_a': moved}, train, config,
                                str(tmp_path / 'cache' / 'stage2'))
    assert _mtime(path) != built
    assert not np.allclose(first, np.asarray(again['cache/component_a/logits']))
    assert teacher_cache.variables_sha256(moved) != teacher_cache.variables_sha256(frozen['component_a'])


def test_stage2_cache_over_limit_names_the_field(tmp_path):
    comps = _components()
    stage = _stage2(comps)
    frozen = {net.name: v for net, v in comps.values()}
    train = types.SimpleNamespace(images=toy.images(8))
    with pytest.raises(ConfigError, match=r'stage2\.cache_limit_gb.*stage2\.component_cache = False'):
        caches.stage2_cache(stage, frozen, train, _config(cache_limit_gb=1e-6), str(tmp_path / 's2'))
    assert not os.listdir(tmp_path)


# ----------------------------------------------------------------------------- selected-teacher storage

def _offline_stage1():
    # Teachers of different widths: their taps share slots of different sizes (zero-padded).
    a, a_vars = toy.teacher('a_t', 'cifar_resnet8', 7, {'a': (0, 5)}, seed=3)
    b, b_vars = toy.teacher('b_t', 'cifar_resnet14', 6, {'a': (1, 6)}, seed=4, widths=(8, 8, 16, 24))
    return toy.stage1([a, b], offline=True, cached=True), {'a_t': a_vars, 'b_t': b_vars}


def _disk_bytes(path):
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))


def test_selected_teacher_storage_trains_like_the_full_cache(tmp_path):
    full_stage, frozen = _offline_stage1()
    images = toy.images(20)
    selected = np.random.default_rng(0).integers(0, 2, 20).astype(np.int32)
    slots = teacher_cache.selected_slots(full_stage.cache_spec(), frozen, images.shape[1:])
    assert slots['a_t']['stage3'] == ('cache/selected/tap3', (3, 3, 64))
    assert slots['b_t']['stage3'] == ('cache/selected/tap3', (3, 3, 24))
    sel_stage = dataclasses.replace(full_stage, selected_slots=slots)
    kw = dict(images=images, key={}, batch_size=8, feature_dtype='float32')
    full = teacher_cache.load_or_build(str(tmp_path / 'full'), spec=full_stage.cache_spec(), frozen=frozen, **kw)
    only = teacher_cache.load_or_build(str(tmp_path / 'sel'), spec=sel_stage.cache_spec(), frozen=frozen, selected=selected,
                                       **kw)
    assert 'cache/a_t/stage3' not in only and only['cache/selected/tap3'].shape == (20, 3 * 3 * 64)
    np.testing.assert_array_equal(only['cache/b_t/logits'], full['cache/b_t/logits'])  # every teacher's
    i = int(np.flatnonzero(selected == 1)[0])  # a sample of b_t: its features, then zero padding
    row = np.asarray(only['cache/selected/tap3'][i])
    np.testing.assert_array_equal(row[:3 * 3 * 24], np.asarray(full['cache/b_t/stage3'][i]).reshape(-1))
    assert not row[3 * 3 * 24:].any()
    assert _disk_bytes(tmp_path / 'sel') < 0.7 * _disk_bytes(tmp_path / 'full')

    def train(stage, cache):  # two steps, one trace
        chex.clear_trace_counter()
        return train_student(name='stage1/a', student=stage.student,
                             loss_fn=chex.assert_max_traces(stage.loss, n=1),
                             bridges=stage.init_bridges(jax.random.key(1)), cfg=toy.stage_config(epochs=1),
                             arrays={'image': images, 'selected': selected, **cache}, frozen={},
                             mesh=sharding.make_mesh(1), seed=0)
    expected, m_ref = train(full_stage, full)
    got, m = train(sel_stage, only)
    _close(expected, got)
    np.testing.assert_allclose(m['loss'], m_ref['loss'], rtol=1e-4)
    assert m['selected/a_t'] == pytest.approx(m_ref['selected/a_t'], abs=1e-6)


def test_other_selection_rebuilds_the_selected_teacher_cache(tmp_path):
    stage, frozen = _offline_stage1()
    images = toy.images(8)
    slots = teacher_cache.selected_slots(stage.cache_spec(), frozen, images.shape[1:])
    stage = dataclasses.replace(stage, selected_slots=slots)
    kw = dict(spec=stage.cache_spec(), frozen=frozen, images=images, key={}, batch_size=8)
    path = tmp_path / 'sel'
    teacher_cache.load_or_build(str(path), selected=np.zeros(8, np.int32), **kw)
    built = _mtime(path)
    teacher_cache.load_or_build(str(path), selected=np.zeros(8, np.int32), **kw)
    assert _mtime(path) == built
    teacher_cache.load_or_build(str(path), selected=np.ones(8, np.int32), **kw)
    assert _mtime(path) != built


def test_offline_cached_stage1_run_keeps_selected_features_and_trains_alike(tmp_path, caplog):
    stage, frozen = _offline_stage1()
    ckpt = tmp_path / 'teacher.pth'
    ckpt.write_bytes(b'weights')  # hashed into the cache key
    plan = Plan({'a': Task('a', 'multiclass', tuple('01234'))},
                (TeacherSpec('a_t', 'cifar_resnet8', str(ckpt), {'a': (0, 5)}),
                 TeacherSpec('b_t', 'cifar_resnet14', str(ckpt), {'a': (1, 6)}, widths=(8, 8, 16, 24))), ('a',))
    teachers, train, mesh = {t.name: t for t in stage.teachers}, types.SimpleNamespace(images=toy.images(20)), \
        sharding.make_mesh(1)

    def run(cache, workdir):
        config = _config('stage1', selection='offline', selector='least_entropy', bridge_width_ratio=0.5, tap_pairs={},
                         teacher_cache=cache)
        return stages.run_stage1('a', plan, teachers, frozen, train, config, mesh, str(workdir))[1]
    log = logging.getLogger('kamal_jax')
    log.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger='kamal_jax'):
            got = run(True, tmp_path / 'c')
    finally:
        log.removeHandler(caplog.handler)
    assert 'selected-teacher features only' in caplog.text and 'saved' in caplog.text
    files = set(os.listdir(tmp_path / 'c' / 'cache' / 'stage1' / 'a'))
    assert {'cache__a_t__logits.npy', 'cache__b_t__logits.npy', 'cache__selected__tap0.npy'} <= files
    assert not any(f.startswith(('cache__a_t__stage', 'cache__b_t__stage')) for f in files)
    # The build made the offline selection itself, from the logits it cached: the same as selecting apart.
    made = np.load(tmp_path / 'c' / 'cache' / 'stage1' / 'a' / 'selected.npy')
    weights = stages.offline_selection('a', stage.teachers, frozen, train.images, 8)
    np.testing.assert_array_equal(made, selection.choice(weights))
    assert 0 < made.mean() < 1  # both teachers are selected for some samples
    _close(run(False, tmp_path / 'u'), got)
