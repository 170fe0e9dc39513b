"""The XLA:CPU flag launch.py turns on changes training results only within float tolerance."""
import os
import subprocess
import sys
import textwrap

import numpy as np

from kamal_jax import xla

HERE = os.path.dirname(__file__)
ROOT = os.path.dirname(HERE)

SCRIPT = textwrap.dedent('''
    import sys
    import jax, numpy as np
    import toy
    from kamal_jax.train import sharding
    from kamal_jax.train.trainer import train_student
    t1, v1 = toy.teacher('t1', 'cifar_resnet8', 7, {'a': (0, 5)}, seed=1, size=16)
    t2, v2 = toy.teacher('t2', 'cifar_resnet14', 7, {'a': (2, 7)}, seed=2, size=16)
    stage = toy.stage1([t1, t2])
    variables, m = train_student(
        name='flag', student=stage.student, loss_fn=stage.loss,
        bridges=stage.init_bridges(jax.random.key(0)), cfg=toy.stage_config(epochs=1, batch_size=16),
        arrays={'image': toy.images(64, size=16)}, frozen={'t1': v1, 't2': v2},
        mesh=sharding.make_mesh(1), seed=0, crop_padding=2, log_every=1)
    np.save(sys.argv[1], np.concatenate([np.ravel(x) for x in jax.tree.leaves(variables)] + [[m['loss']]]))
''')


def _run(out, with_flag):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, HERE]))
    env.pop('XLA_FLAGS', None)
    if with_flag:
        xla.apply_cpu_defaults(env)
        assert xla.YNN_FLAG in env['XLA_FLAGS']
    result = subprocess.run([sys.executable, '-c', SCRIPT, str(out)], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return np.load(out)


def test_ynn_flag_keeps_results_within_float_tolerance(tmp_path):
    plain = _run(tmp_path / 'plain.npy', False)
    fast = _run(tmp_path / 'fast.npy', True)
    assert plain.shape == fast.shape and np.all(np.isfinite(plain))
    np.testing.assert_allclose(fast[-1], plain[-1], rtol=1e-5)  # final loss
    np.testing.assert_allclose(fast, plain, rtol=1e-3, atol=1e-4)


def test_flag_is_not_added_twice_or_when_disabled():
    env = {'XLA_FLAGS': '--xla_force_host_platform_device_count=4'}
    xla.apply_cpu_defaults(env)
    xla.apply_cpu_defaults(env)
    assert env['XLA_FLAGS'].count('ynn') == 1 and 'device_count=4' in env['XLA_FLAGS']
    off = {'KAMAL_JAX_PLAIN_XLA': '1'}
    xla.apply_cpu_defaults(off)
    assert 'XLA_FLAGS' not in off
