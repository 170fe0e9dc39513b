"""The one-stage recipes' teacher logits cache: the cached logits are the live teachers' (to float16
rounding), per teacher and task, and a target trained from them trains like one whose teachers run."""
import dataclasses
import json
import types

import jax
import numpy as np
import pytest

import kamal_jax
import toy
from kamal_jax import models, pipeline, recipes, selection
from kamal_jax.data.datasets import ArraySplit
from kamal_jax.recipes import caches
from kamal_jax.tasks import ConfigError, Plan, Task, TeacherSpec
from kamal_jax.train import sharding, teacher_cache, views as views_lib
from kamal_jax.train.augment import to_unit
from kamal_jax.train.nets import Net
from kamal_jax.train.objectives import Distill, LossWeights
from kamal_jax.train.trainer import train_student


def _setup():
    # b_t teaches both tasks from one softmax: its two heads are slices of the same logits.
    a, a_vars = toy.teacher('a_t', 'cifar_resnet8', 7, {'a': (0, 5)}, seed=3)
    b, b_vars = toy.teacher('b_t', 'cifar_resnet14', 9, {'a': (1, 6), 'b': (5, 9)}, seed=4)
    c, c_vars = toy.teacher('c_t', 'cifar_resnet8', 4, {'b': (0, 4)}, seed=5)
    target = Net('target', 'cifar_resnet8', models.multihead('cifar_resnet8', [('a', 5), ('b', 4)]), toy.MEAN, toy.STD)
    stage = Distill(target, (('a', (a, b)), ('b', (b, c))), {}, LossWeights(temperature=4.0),
                    combine=selection.get_combiner('product'))
    return stage, {'a_t': a_vars, 'b_t': b_vars, 'c_t': c_vars}


def _train(stage, frozen, arrays):
    return train_student(name='target', student=stage.student, loss_fn=stage.loss, bridges={},
                         cfg=toy.stage_config(epochs=2), arrays=arrays, frozen=frozen, mesh=sharding.make_mesh(1),
                         seed=0)


def test_cached_logits_are_the_live_teachers_and_train_alike(tmp_path):
    stage, frozen = _setup()
    images = toy.images(20)  # batch 8: the build's last chunk is padded
    caches = {}
    for dtype, tol in (('float32', 1e-6), ('float16', 1e-3)):
        spec = stage.cache_spec(dtype)
        caches[dtype] = cache = teacher_cache.load_or_build(str(tmp_path / dtype), spec=spec, frozen=frozen,
                                                            images=images, key={}, batch_size=8)
        assert sorted(cache) == ['cache/a_t/logits/a', 'cache/b_t/logits/a', 'cache/b_t/logits/b',
                                 'cache/c_t/logits/b']
        for net, task in spec.nets:
            live, _ = net.apply_eval(frozen[net.name], to_unit(images))
            got = cache[teacher_cache.logits_key(net.name, task)]
            assert got.dtype == np.dtype(dtype) and got.shape == live[task].shape
            np.testing.assert_allclose(got.astype(np.float32), np.asarray(live[task]), rtol=tol, atol=tol)
    # float16 logits, the cache's default: the same training to float16's rounding of the targets.
    expected, m_ref = _train(stage, frozen, {'image': images})
    got, m = _train(dataclasses.replace(stage, cached=True), {}, {'image': images, **caches['float16']})
    for x, y in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=2e-3, rtol=2e-3)
    np.testing.assert_allclose(m['loss'], m_ref['loss'], rtol=1e-3)


# ----------------------------------------------------------------------------- the recipe end to end

CLASSES = [f'c{i}' for i in range(9)]


def _run(tmp_path, workdir, *, cache, views=0, cache_dtype='float32'):
    """The `product` recipe on two tasks from three teachers (one teaching both), through `run_recipes`."""
    stage, frozen = _setup()
    teachers = {t.name: t for t in stage.teachers}
    specs = []
    for t in stage.teachers:  # the cache is keyed by the checkpoints' hashes: stand-in files
        path = tmp_path / f'{t.name}.pth'
        if not path.exists():
            path.write_bytes(t.name.encode())
        specs.append(TeacherSpec(t.name, t.arch, str(path), t.heads))
    plan = Plan({'a': Task('a', 'multiclass', tuple(CLASSES[:5])), 'b': Task('b', 'multiclass', tuple(CLASSES[5:]))},
                tuple(specs), ('a', 'b'))
    config = toy.run_config(
        data=dict(mean=toy.MEAN, std=toy.STD, crop_padding=1, flip=True, views=views),
        stage2=toy.stage_config(epochs=1, checkpoint_every=100, cache_dtype=cache_dtype),
        baseline_stage=dict(epochs=4, temperature=2.0, logits_cache=cache), eval_batch_size=8, log_every=1,
        target_tasks=('a', 'b'), recipe='product')
    rng = np.random.default_rng(0)
    train = ArraySplit(toy.images(12), {'label': rng.integers(0, 9, 12)}, {'label': CLASSES}, 'toy', 'train')
    held_out = ArraySplit(toy.images(12, seed=1), {'label': rng.integers(0, 9, 12)}, {'label': CLASSES}, 'toy',
                          'test')
    train = views_lib.expand_split(train, config.data, config.seed)  # as the pipeline does for data.views
    run = recipes.Run(config, plan, teachers, frozen, train, held_out, sharding.make_mesh(1), str(workdir))
    entries, _ = pipeline.run_recipes(run, ('product',), main='product')
    return entries['target'], kamal_jax.load_student(str(workdir / 'export'))


def test_a_cached_run_trains_like_live_teachers_on_the_same_views(tmp_path, caplog):
    caplog.set_level('INFO', logger='kamal_jax')
    cached, cached_student = _run(tmp_path, tmp_path / 'cached', cache='on')  # 4 views drawn for the cache (4 epochs)
    assert 'teacher logits cache: on, 4 views per image (on)' in caplog.text
    assert (tmp_path / 'cached' / 'cache' / 'target' / 'manifest.json').is_file()
    live, live_student = _run(tmp_path, tmp_path / 'live', cache='off', views=4)  # the same 4 views, teachers live
    assert 'teacher logits cache: off (off)' in caplog.text
    assert not (tmp_path / 'live' / 'cache' / 'target').exists()
    for x, y in zip(jax.tree.leaves(cached_student.variables), jax.tree.leaves(live_student.variables)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)
    assert cached['accuracy'] == live['accuracy']
    np.testing.assert_allclose(cached['final_train_metrics']['loss'], live['final_train_metrics']['loss'], rtol=1e-4)


def test_other_teachers_or_views_rebuild_the_cache_and_a_resumed_run_keeps_its_decision(tmp_path, caplog):
    caplog.set_level('INFO', logger='kamal_jax')
    workdir = tmp_path / 'w'
    _run(tmp_path, workdir, cache='on', cache_dtype='float16')
    decision = json.loads((workdir / 'cache' / 'target_decision.json').read_text())
    assert decision['cached'] and decision['views'] == 4 and decision['setting'] == 'on'
    stage, frozen = _setup()
    cache = dataclasses.replace(stage, cached=True)
    images = views_lib.predraw(toy.images(12), 4, crop_padding=1, flip=True, seed=0)
    config = toy.run_config(data=dict(mean=toy.MEAN, std=toy.STD, crop_padding=1, flip=True), eval_batch_size=8)
    plan_specs = {t.name: TeacherSpec(t.name, t.arch, str(tmp_path / f'{t.name}.pth'), t.heads) for t in stage.teachers}
    plan = Plan({'a': Task('a', 'multiclass', tuple(CLASSES[:5])), 'b': Task('b', 'multiclass', tuple(CLASSES[5:]))},
                tuple(plan_specs.values()), ('a', 'b'))
    cfg = types.SimpleNamespace(cache_dtype='float16', cache_limit_gb=1.0)
    path = str(workdir / 'cache' / 'target')

    def build(imgs, views):
        caplog.clear()
        return caches.one_stage_cache(cache, plan, frozen, imgs, config, cfg, path, views)
    build(images, 4)
    assert 'outputs from the cache' in caplog.text and 'rebuilding' not in caplog.text  # the run's own cache
    build(images[:24], 2)
    assert 'for other teachers, data, views or selection; rebuilding it' in caplog.text
    (tmp_path / 'c_t.pth').write_bytes(b'another checkpoint')
    build(images[:24], 2)
    assert 'rebuilding it' in caplog.text
    # Over its limit, the cache is one sentence naming the fields to change, and nothing is written.
    cfg.cache_limit_gb = 1e-9
    with pytest.raises(ConfigError, match=r"baseline_stage\.cache_limit_gb = 1e-09.*baseline_stage\.logits_cache = 'off'"):
        caches.one_stage_cache(cache, plan, frozen, images, config, cfg, str(tmp_path / 'over'), 4)
    assert not (tmp_path / 'over').exists()
    # Resumed (its checkpoints exist), the run keeps the decision it started with.
    caplog.clear()
    _run(tmp_path, workdir, cache='on', cache_dtype='float16')
    assert '(as this run started)' in caplog.text
