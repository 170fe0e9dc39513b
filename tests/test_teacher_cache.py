"""Stage 1 from cached teacher outputs: same result as running the teachers; stale caches rebuilt."""
import dataclasses
import os

import jax
import numpy as np
import pytest

import toy
from kamal_jax import pipeline
from kamal_jax.recipes import caches
from kamal_jax.tasks import ConfigError
from kamal_jax.train import sharding, teacher_cache
from kamal_jax.train.trainer import train_student

KEY = {'teachers': {'a_t': 'sha-a', 'b_t': 'sha-b'}, 'data': {'name': 'toy', 'size': 16},
       'views': {'crop_padding': 0, 'flip': False}}


def _setup():
    a, a_vars = toy.teacher('a_t', 'cifar_resnet8', 7, {'a': (0, 5)}, seed=3)
    b, b_vars = toy.teacher('b_t', 'cifar_resnet14', 6, {'a': (1, 6)}, seed=4)
    return toy.stage1([a, b]), {'a_t': a_vars, 'b_t': b_vars}


def _build(path, stage, frozen, images, key=KEY, **kw):
    return teacher_cache.load_or_build(str(path), spec=stage.cache_spec(), frozen=frozen, images=images, key=key,
                                       batch_size=8, **kw)


def _train(stage, frozen, arrays):
    return train_student(name='stage1/a', student=stage.student, loss_fn=stage.loss,
                         bridges=stage.init_bridges(jax.random.key(1)), cfg=toy.stage_config(epochs=2),
                         arrays=arrays, frozen=frozen, mesh=sharding.make_mesh(1), seed=0)


@pytest.mark.parametrize('feature_dtype,tol', [('float32', 1e-4), ('float16', 2e-2)])
def test_cached_stage1_trains_like_running_the_teachers(tmp_path, feature_dtype, tol):
    stage, frozen = _setup()
    images = toy.images(20)  # 20 images, batch 8: the cache's last chunk is padded
    expected, m_ref = _train(stage, frozen, {'image': images})
    cache = _build(tmp_path / 'a', stage, frozen, images, feature_dtype=feature_dtype)
    assert all(isinstance(v, np.memmap) for v in cache.values())
    assert cache['cache/a_t/logits'].dtype == np.float32 and cache['cache/a_t/logits'].shape == (20, 5)
    assert cache['cache/b_t/stage3'].dtype == np.dtype(feature_dtype)
    cached = dataclasses.replace(stage, cached=True)
    got, m = _train(cached, {}, {'image': images, **cache})
    for x, y in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=tol, rtol=tol)
    np.testing.assert_allclose(m['loss'], m_ref['loss'], rtol=tol)
    assert m['selected/a_t'] == pytest.approx(m_ref['selected/a_t'], abs=1e-6)


def test_bfloat16_features_round_trip(tmp_path):
    stage, frozen = _setup()
    images = toy.images(8)
    cache = _build(tmp_path / 'a', stage, frozen, images, feature_dtype='bfloat16')
    again = _build(tmp_path / 'a', stage, frozen, images, feature_dtype='bfloat16')  # reused as is
    assert str(again['cache/a_t/stage1'].dtype) == 'bfloat16'
    assert os.path.samefile(cache['cache/a_t/stage1'].filename, again['cache/a_t/stage1'].filename)


def test_cache_build_prints_progress_with_eta(tmp_path, monkeypatch):
    from kamal_jax import progress
    monkeypatch.setattr(progress, 'EVERY_S', 0.0)  # a line per chunk, however fast
    lines = []
    monkeypatch.setattr(progress.log, 'info', lambda msg, *a: lines.append(msg % a if a else msg))
    stage, frozen = _setup()
    _build(tmp_path / 'a', stage, frozen, toy.images(20))  # chunks of 8, 8 and 4 images
    built = [l for l in lines if l.startswith('building cache a:')]
    assert [l.split(': ', 1)[1].split(' (')[0] for l in built] == ['8/20 images', '16/20 images', '20/20 images']
    assert 'eta ' in built[0] and 'eta ' in built[1] and 'took ' in built[2]


def _mtime(path):
    return os.stat(os.path.join(path, teacher_cache.MANIFEST)).st_mtime_ns


def test_stale_cache_is_rebuilt(tmp_path):
    stage, frozen = _setup()
    images = toy.images(8)
    path = tmp_path / 'a'
    first = np.array(_build(path, stage, frozen, images)['cache/a_t/logits'])
    built = _mtime(path)
    _build(path, stage, frozen, images)
    assert _mtime(path) == built  # reused
    # Other teacher weights (another checkpoint hash): rebuilt with the new teacher's outputs.
    _, other_vars = toy.teacher('a_t', 'cifar_resnet8', 7, {'a': (0, 5)}, seed=9)
    other = _build(path, stage, {**frozen, 'a_t': other_vars},
                   images, key={**KEY, 'teachers': {'a_t': 'sha-other', 'b_t': 'sha-b'}})
    assert _mtime(path) != built
    assert not np.allclose(first, np.asarray(other['cache/a_t/logits']))
    # Other data of the same shape under the same key: the image checksum tells them apart.
    built = _mtime(path)
    new = _build(path, stage, {**frozen, 'a_t': other_vars}, toy.images(8, seed=5),
                 key={**KEY, 'teachers': {'a_t': 'sha-other', 'b_t': 'sha-b'}})
    assert _mtime(path) != built
    assert not np.allclose(np.asarray(other['cache/a_t/logits']), np.asarray(new['cache/a_t/logits']))


def test_half_written_cache_is_rebuilt(tmp_path):
    stage, frozen = _setup()
    images = toy.images(8)
    path = tmp_path / 'a'
    good = np.array(_build(path, stage, frozen, images)['cache/b_t/stage2'])
    os.remove(path / teacher_cache.MANIFEST)  # as if killed before the manifest was written
    np.save(path / 'cache__b_t__stage2.npy', np.zeros_like(good))
    again = _build(path, stage, frozen, images)
    assert os.path.isfile(path / teacher_cache.MANIFEST)
    np.testing.assert_array_equal(np.asarray(again['cache/b_t/stage2']), good)
    # A truncated array under an intact manifest is not trusted either.
    np.save(path / 'cache__b_t__stage2.npy', good[:3])
    np.testing.assert_array_equal(np.asarray(_build(path, stage, frozen, images)['cache/b_t/stage2']), good)


def test_over_limit_refuses_before_building(tmp_path):
    stage, frozen = _setup()
    images = toy.images(8)
    spec = teacher_cache.layout(stage.cache_spec(), frozen, images.shape[1:], len(images))
    nbytes = teacher_cache.size_bytes(spec)
    assert nbytes == sum(np.prod(s) * np.dtype(d).itemsize for s, d in spec.values())
    with pytest.raises(teacher_cache.CacheTooLarge):
        _build(tmp_path / 'a', stage, frozen, images, limit_gb=nbytes / 2 ** 30 / 2)
    assert not os.listdir(tmp_path)
    # A run names the config fields to change.
    config = toy.run_config(eval_batch_size=8, stage1=dict(cache_limit_gb=nbytes / 2 ** 30 / 2, cache_dtype='float16'),
                            data=dict(image_size=(12, 12)))
    with pytest.raises(ConfigError, match=r'stage1\.cache_limit_gb.*stage1\.teacher_cache = False'):
        caches.load_cache('stage-1 teacher cache', str(tmp_path / 'b'), stage.cache_spec(), frozen, images,
                          config, config.stage1, 'stage1.teacher_cache = False', {})
    assert not os.listdir(tmp_path)


def _config(switch, **data):
    c = toy.quickstart_config()
    section, flag = switch.split('.')
    c[section][flag] = True
    c.data.update(data)
    return c


@pytest.mark.parametrize('switch', ['stage1.teacher_cache', 'stage2.component_cache'])
@pytest.mark.parametrize('data,field', [(dict(crop_padding=2, flip=False), 'data.crop_padding'),
                                        (dict(crop_padding=0, flip=True), 'data.flip')])
def test_caches_need_fixed_views(switch, data, field):
    section, flag = switch.split('.')
    assert not toy.quickstart_config()[section].get(flag, False)  # off by default
    with pytest.raises(ConfigError, match=f'{switch}.*{field}'):
        pipeline.validate(_config(switch, **data), 'runs/x')
    pipeline.validate(_config(switch, crop_padding=0, flip=False), 'runs/x')
