"""compute_dtype='bfloat16': bf16 activations, float32 params/optimiser state, float32 losses."""
import dataclasses
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import toy
from kamal_jax import models, pipeline
from kamal_jax.tasks import ConfigError
from kamal_jax.train import sharding
from kamal_jax.train.trainer import train_student

ROOT = os.path.dirname(os.path.dirname(__file__))


def _train(dtype):
    t1, v1 = toy.teacher('t1', 'cifar_resnet8', 7, {'a': (0, 5)}, seed=1)
    t2, v2 = toy.teacher('t2', 'cifar_resnet8', 7, {'a': (2, 7)}, seed=2)
    stage = toy.stage1([t1.with_compute_dtype(dtype), t2.with_compute_dtype(dtype)])
    stage = dataclasses.replace(stage, student=stage.student.with_compute_dtype(dtype))
    return train_student(
        name=f'mp_{dtype}', student=stage.student, loss_fn=stage.loss,
        bridges=stage.init_bridges(jax.random.key(0)), cfg=toy.stage_config(epochs=1, batch_size=8),
        arrays={'image': toy.images(16)}, frozen={'t1': v1, 't2': v2}, mesh=sharding.make_mesh(1),
        seed=0, crop_padding=2, log_every=1)


def test_bf16_step_keeps_float32_params_and_close_loss():
    v32, m32 = _train('float32')
    v16, m16 = _train('bfloat16')
    assert np.isfinite(m16['loss'])
    for leaf in jax.tree.leaves(v16):
        assert leaf.dtype == jnp.float32, leaf.dtype
    np.testing.assert_allclose(m16['loss'], m32['loss'], rtol=0.05)
    for a, b in zip(jax.tree.leaves(v16['params']), jax.tree.leaves(v32['params'])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=0.05)


def test_bf16_forward_computes_in_bf16():
    for arch in ('cifar_resnet8', 'mobilenet_v2', 'vit_tiny_4'):
        net = toy.student('a', 3, arch).with_compute_dtype('bfloat16')
        x = jnp.zeros((2, 32, 32, 3))
        variables = net.module.init(jax.random.key(0), net.prepare(x))
        assert all(l.dtype == jnp.float32 for l in jax.tree.leaves(variables['params'])), arch
        logits, feats = net.module.apply(variables, net.prepare(x), train=False)
        assert logits['a'].dtype == jnp.bfloat16, arch
        assert all(f.dtype == jnp.bfloat16 for f in feats.values()), arch


def test_float32_default_is_unchanged():
    net = toy.student()
    assert net.with_compute_dtype('float32') is net and net.with_compute_dtype(None) is net
    assert models.registry.with_dtype(net.module, 'float32') is net.module


def test_unknown_compute_dtype_is_refused():
    spec = importlib.util.spec_from_file_location('quickstart', os.path.join(ROOT, 'configs', 'quickstart.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config('tiny')
    config.compute_dtype = 'float16'
    with pytest.raises(ConfigError, match="compute_dtype must be one of 'float32', 'bfloat16', got 'float16'"):
        pipeline.validate(config)
