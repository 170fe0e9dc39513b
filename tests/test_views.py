"""K pre-drawn views: exact translations/flips of each image, one view per sample per epoch, cacheable."""
import types

import jax
import numpy as np
import pytest

import toy
from kamal_jax import config_schema, pipeline
from kamal_jax.recipes import stages
from kamal_jax.tasks import ConfigError, Plan, Task, TeacherSpec
from kamal_jax.train import sharding, views
from kamal_jax.train.loop import EpochBatches


def _transforms(image, pad):
    """Every view on-the-fly augmentation can draw: reflect-padded translations, with and without flip."""
    h, w, _ = image.shape
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode='reflect')
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[dy:dy + h, dx:dx + w]
            yield crop
            yield crop[:, ::-1]


def test_predrawn_views_are_exact_augmentations_of_their_image():
    images = toy.images(6, size=10)
    got = views.predraw(images, 3, crop_padding=2, flip=True, seed=0)
    assert got.shape == (18, 10, 10, 3) and got.dtype == np.uint8
    for v in range(3):
        for i in range(6):
            assert any(np.array_equal(got[v * 6 + i], t) for t in _transforms(images[i], 2)), (v, i)
    assert not np.array_equal(got[:6], got[6:12])  # the views differ
    np.testing.assert_array_equal(got, views.predraw(images, 3, crop_padding=2, flip=True, seed=0))
    assert not np.array_equal(got, views.predraw(images, 3, crop_padding=2, flip=True, seed=1))


def test_an_epoch_shows_each_sample_once_in_one_of_its_views():
    n, k = 24, 3
    batches = EpochBatches({'row': np.arange(k * n)}, batch_size=8, seed=0, views=k)
    assert (batches.size, batches.steps_per_epoch) == (n, 3)
    seen_views = set()
    for epoch in range(2):
        rows = np.concatenate([batches.batch(epoch * 3 + i)['row'] for i in range(3)])
        np.testing.assert_array_equal(np.sort(rows % n), np.arange(n))
        seen_views |= set((rows // n).tolist())
    assert seen_views == {0, 1, 2}
    # One view: the plain per-epoch permutation, as before views existed.
    plain = EpochBatches({'row': np.arange(n)}, batch_size=8, seed=0)
    np.testing.assert_array_equal(plain.batch(0)['row'], np.random.default_rng([0, 0]).permutation(n)[:8])
    with pytest.raises(ValueError, match='cannot hold 3 views'):
        EpochBatches({'row': np.arange(25)}, batch_size=8, seed=0, views=3)


@pytest.mark.parametrize('data,match', [(dict(views=2, crop_padding=0, flip=False), 'data.views = 2 pre-draws'),
                                        (dict(views=-1), 'data.views must be')])
def test_bad_views_config_names_the_field(data, match):
    c = toy.quickstart_config()
    c.data.update(data)
    with pytest.raises(ConfigError, match=match):
        pipeline.validate(c, 'runs/x')


def test_views_must_be_a_whole_number():
    with pytest.raises(ConfigError, match='data.views must be a whole number'):
        toy.run_config(data={'views': 1.5, 'crop_padding': 2})  # a config file may hold any value


def test_caches_accept_predrawn_views():
    c = toy.quickstart_config()
    c.data.update(crop_padding=2, flip=True, views=4)
    c.stage1.teacher_cache = c.stage2.component_cache = True
    pipeline.validate(c, 'runs/x')
    assert views.step_augmentation(config_schema.resolve(c).data) == dict(crop_padding=0, flip=False, views=4)


def test_cached_stage1_on_predrawn_views_trains_like_running_the_teachers(tmp_path):
    """The step shows the pre-drawn views as they are, so cached outputs match what the teachers see."""
    a, a_vars = toy.teacher('a_t', 'cifar_resnet8', 7, {'a': (0, 5)}, seed=3)
    b, b_vars = toy.teacher('b_t', 'cifar_resnet14', 6, {'a': (1, 6)}, seed=4)
    ckpt = tmp_path / 'teacher.pth'
    ckpt.write_bytes(b'weights')
    plan = Plan({'a': Task('a', 'multiclass', tuple('01234'))},
                (TeacherSpec('a_t', 'cifar_resnet8', str(ckpt), {'a': (0, 5)}),
                 TeacherSpec('b_t', 'cifar_resnet14', str(ckpt), {'a': (1, 6)})), ('a',))
    data = dict(name='toy', train_split='train', train_limit=0, image_size=(12, 12), mean=toy.MEAN, std=toy.STD,
                crop_padding=2,
                flip=True, views=2)
    train = types.SimpleNamespace(images=views.predraw(toy.images(16), 2, crop_padding=2, flip=True, seed=0))

    def run(cache):
        stage = dict(toy.stage_config(epochs=2).to_dict(), selection='online', selector='least_entropy',
                     teacher_cache=cache, cache_dtype='float32', cache_limit_gb=1.0)
        config = toy.run_config(eval_batch_size=8, log_every=2, data=data, stage1=stage)
        return stages.run_stage1('a', plan, {'a_t': a, 'b_t': b}, {'a_t': a_vars, 'b_t': b_vars}, train,
                                   config, sharding.make_mesh(1), str(tmp_path / ('c' if cache else 'u')))

    _, expected, m_ref = run(False)
    _, got, m = run(True)
    assert (tmp_path / 'c' / 'cache' / 'stage1' / 'a' / 'manifest.json').exists()
    for x, y in zip(jax.tree.leaves(expected), jax.tree.leaves(got), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(m['loss'], m_ref['loss'], rtol=1e-4)

