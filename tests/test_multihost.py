"""Two processes (JAX's multi-process runtime, gloo on CPU) train like one process on the same batch."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

HERE = os.path.dirname(__file__)
ROOT = os.path.dirname(HERE)

SCRIPT = textwrap.dedent('''
    import json, os, sys
    out_path, ckpt = sys.argv[1], sys.argv[2]
    from kamal_jax.train import distributed
    distributed.maybe_initialize()
    import jax, numpy as np
    import toy
    from kamal_jax.train import sharding
    from kamal_jax.train.trainer import train_student
    config = {'seed': 0, 'stage1': {'lr': float(os.environ.get('TEST_LR', '1e-3'))}}
    distributed.check_same_config(config)
    t1, v1 = toy.teacher('t1', 'cifar_resnet8', 7, {'a': (0, 5)}, seed=1)
    t2, v2 = toy.teacher('t2', 'cifar_resnet8', 7, {'a': (2, 7)}, seed=2)
    stage = toy.stage1([t1, t2])
    mesh = sharding.make_mesh()
    variables, metrics = train_student(
        name='mh', student=stage.student, loss_fn=stage.loss,
        bridges=stage.init_bridges(jax.random.key(0)),
        cfg=toy.stage_config(epochs=1, batch_size=8, checkpoint_every=2),
        arrays={'image': toy.images(32)}, frozen={'t1': v1, 't2': v2}, mesh=mesh, seed=0,
        crop_padding=2, log_every=1, ckpt_dir=ckpt or None)
    leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(sharding.to_host(variables))]
    if distributed.is_primary():
        with open(out_path, 'w') as f:
            json.dump({'loss': metrics['loss'], 'devices': mesh.size,
                       'processes': jax.process_count(),
                       'leaves': [x.ravel().tolist() for x in leaves]}, f)
    print('MH_OK', jax.process_index())
''')


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _env(devices, **extra):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, HERE]), JAX_PLATFORMS='cpu', **extra)
    env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
    for k in ('KAMAL_COORDINATOR_ADDRESS', 'KAMAL_NUM_PROCESSES', 'KAMAL_PROCESS_ID', 'KAMAL_DISTRIBUTED'):
        env.pop(k, None)
    return env


def _run_processes(tmp_path, n, devices, ckpt='', extra_env=None, timeout=300):
    port = _free_port()
    out = tmp_path / f'out_{n}x{devices}.json'
    procs = []
    try:
        for pid in range(n):
            env = _env(devices, **(extra_env[pid] if extra_env else {}))
            if n > 1:
                env.update(KAMAL_COORDINATOR_ADDRESS=f'127.0.0.1:{port}', KAMAL_NUM_PROCESSES=str(n),
                           KAMAL_PROCESS_ID=str(pid))
            procs.append(subprocess.Popen([sys.executable, '-c', SCRIPT, str(out), ckpt], env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        logs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [p.returncode for p in procs], logs, out


def test_two_processes_match_one(tmp_path):
    codes, logs, out2 = _run_processes(tmp_path, 2, 1, ckpt=str(tmp_path / 'ckpt'))
    assert codes == [0, 0], '\n'.join(l[-3000:] for l in logs)
    codes, logs, out1 = _run_processes(tmp_path, 1, 2)
    assert codes == [0], logs[0][-3000:]
    two, one = json.load(open(out2)), json.load(open(out1))
    assert (two['processes'], two['devices'], one['processes'], one['devices']) == (2, 2, 1, 2)
    assert np.isfinite(one['loss'])
    np.testing.assert_allclose(two['loss'], one['loss'], rtol=1e-5)
    for a, b in zip(two['leaves'], one['leaves'], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # Orbax wrote one checkpoint, from both processes together.
    assert sorted(os.listdir(tmp_path / 'ckpt')) == ['2', '4']


def test_processes_with_different_configs_stop_naming_the_field(tmp_path):
    codes, logs, _ = _run_processes(tmp_path, 2, 1, extra_env=[{'TEST_LR': '1e-3'}, {'TEST_LR': '2e-3'}],
                                    timeout=120)
    assert codes[0] != 0 and codes[1] != 0, logs
    assert any('disagree on the config: stage1.lr' in l for l in logs), '\n'.join(logs)


def test_settings_from_environment():
    from kamal_jax.train import distributed
    assert distributed.settings({}) is None
    assert distributed.settings({'KAMAL_DISTRIBUTED': 'auto'}) == {}
    assert distributed.settings({'KAMAL_COORDINATOR_ADDRESS': 'h:1', 'KAMAL_NUM_PROCESSES': '2',
                                 'KAMAL_PROCESS_ID': '1'}) == {
        'coordinator_address': 'h:1', 'num_processes': 2, 'process_id': 1}
    with pytest.raises(distributed.DistributedError, match='KAMAL_PROCESS_ID missing'):
        distributed.settings({'KAMAL_COORDINATOR_ADDRESS': 'h:1', 'KAMAL_NUM_PROCESSES': '2'})
    with pytest.raises(distributed.DistributedError, match='must lie in'):
        distributed.settings({'KAMAL_COORDINATOR_ADDRESS': 'h:1', 'KAMAL_NUM_PROCESSES': '2',
                              'KAMAL_PROCESS_ID': '2'})
