"""Sharded steps (one or several per call) equal single-device steps, sharded evaluation equals
one-device evaluation; an interrupted run resumes to the same result."""
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np

import toy
from kamal_jax.train import sharding
from kamal_jax.train.trainer import train_student

HERE = os.path.dirname(__file__)
ROOT = os.path.dirname(HERE)

SHARDED_SCRIPT = textwrap.dedent('''
    import os, sys
    os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4'
    import jax, numpy as np
    assert len(jax.devices()) == 4, jax.devices()
    import toy
    from kamal_jax.train import evaluate, sharding
    from kamal_jax.train.trainer import train_student
    t1, v1 = toy.teacher('t1', 'cifar_resnet8', 7, {'a': (0, 5)}, seed=1)
    t2, v2 = toy.teacher('t2', 'cifar_resnet8', 7, {'a': (2, 7)}, seed=2)
    stage = toy.stage1([t1, t2])
    out = {}
    for n, k in ((1, 1), (4, 1), (4, 2)):  # k: steps per jitted call
        variables, metrics = train_student(
            name=f'mesh{n}x{k}', student=stage.student, loss_fn=stage.loss,
            bridges=stage.init_bridges(jax.random.key(0)), cfg=toy.stage_config(epochs=2, batch_size=8),
            arrays={'image': toy.images(24)}, frozen={'t1': v1, 't2': v2},
            mesh=sharding.make_mesh(n), seed=0, crop_padding=2, log_every=3, steps_per_call=k)
        out[n, k] = (variables, metrics['loss'])
    (p1, l1), (p4, l4), (p42, l42) = out[1, 1], out[4, 1], out[4, 2]
    assert np.isfinite(l1), l1
    np.testing.assert_allclose(l1, l4, rtol=1e-4)
    np.testing.assert_allclose(l42, l4, rtol=1e-5)
    for a, b, c in zip(jax.tree.leaves(p1), jax.tree.leaves(p4), jax.tree.leaves(p42)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-3, atol=2e-5)
        np.testing.assert_allclose(np.asarray(c), np.asarray(b), rtol=1e-5, atol=1e-6)
    # Evaluation runs on the mesh the weights live on, 30 images in padded batches split 4 ways.
    assert evaluate._mesh_of(p4).size == 4 and evaluate._mesh_of(jax.device_get(p4)) is None
    put, calls = sharding.put_batch, []
    sharding.put_batch = lambda batch, mesh, **kw: calls.append(mesh.size) or put(batch, mesh, **kw)
    on_mesh = evaluate.predict(stage.student, p4, toy.images(30, seed=3), batch_size=7)['a']
    sharding.put_batch = put
    on_host = evaluate.predict(stage.student, jax.device_get(p4), toy.images(30, seed=3), batch_size=7)['a']
    assert calls == [4] * 4 and on_mesh.shape == (30, 5), calls  # batch 7 rounds up to 8
    np.testing.assert_allclose(on_mesh, on_host, rtol=1e-5, atol=1e-5)
    print('SHARDED_OK', l1, l4)
''')


def test_sharded_step_matches_single_device():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, HERE]))
    env.pop('XLA_FLAGS', None)
    result = subprocess.run([sys.executable, '-c', SHARDED_SCRIPT], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0 and 'SHARDED_OK' in result.stdout, result.stdout + result.stderr[-3000:]


def _train(tmp_path, stop_after=None, ckpt=True):
    t1, v1 = toy.teacher('t1', 'cifar_resnet8', 7, {'a': (0, 5)}, seed=1)
    t2, v2 = toy.uniform_teacher('t2', 'cifar_resnet8', 7, {'a': (2, 7)}, seed=2)
    stage = toy.stage1([t1, t2])
    return train_student(
        name='resume', student=stage.student, loss_fn=stage.loss,
        bridges=stage.init_bridges(jax.random.key(0)), cfg=toy.stage_config(epochs=2, checkpoint_every=2),
        arrays={'image': toy.images(24)}, frozen={'t1': v1, 't2': v2}, mesh=sharding.make_mesh(1),
        seed=0, crop_padding=2, ckpt_dir=str(tmp_path / 'ckpt') if ckpt else None, log_every=1,
        stop_after=stop_after)


def test_interrupted_run_resumes_to_same_params(tmp_path):
    full, _ = _train(tmp_path / 'full', ckpt=False)          # 6 steps straight through
    _train(tmp_path / 'cut', stop_after=3)                   # killed after step 3 (checkpoint at 2 and 3)
    resumed, _ = _train(tmp_path / 'cut')                    # relaunched: continues 3..6
    assert sorted(os.listdir(tmp_path / 'cut' / 'ckpt'))[-1] == '6'
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    # And the run actually trained: params moved away from a 3-step run.
    early, _ = _train(tmp_path / 'early', stop_after=3, ckpt=False)
    moved = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(early)))
    assert moved > 1e-4


def test_checkpoints_wait_for_the_minimum_interval(tmp_path, monkeypatch):
    """Step multiples within `min_interval_s` of the last save are skipped; forced saves are not."""
    from kamal_jax.train import checkpoint
    clock = [100.0]
    monkeypatch.setattr(checkpoint.time, 'monotonic', lambda: clock[0])
    state = {'w': np.arange(4, dtype=np.float32)}
    ckpt = checkpoint.Checkpointer(str(tmp_path / 'ckpt'), every_steps=2, min_interval_s=60.0)
    saved = []
    for step in range(1, 13):
        clock[0] += 25.0  # 25 s per step: a multiple of 2 steps comes every 50 s
        saved.append(ckpt.maybe_save(step, state))
    assert [s for s, ok in zip(range(1, 13), saved) if ok] == [4, 8, 12]  # 100 s, 100 s, 100 s apart
    assert ckpt.maybe_save(13, state, force=True)
    ckpt.close()
    assert sorted(os.listdir(tmp_path / 'ckpt'), key=int) == ['12', '13']  # max_to_keep = 2
    every = checkpoint.Checkpointer(str(tmp_path / 'every'), every_steps=2)
    assert [s for s in range(1, 7) if every.maybe_save(s, state)] == [2, 4, 6]
    every.close()
