"""The one-stage recipes' teacher logits cache: the cached logits are the live teachers' (to float16
rounding), per teacher and task, and a target trained from them trains like one whose teachers run."""
import dataclasses

import jax
import numpy as np

import toy
from kamal_jax import models, selection
from kamal_jax.train import sharding, teacher_cache
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
