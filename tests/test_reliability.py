"""Faults a run must survive: a NaN never reaches a checkpoint, a damaged checkpoint is skipped."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import toy
from kamal_jax.train import sharding
from kamal_jax.recipes import RETUNABLE_SECTIONS
from kamal_jax.train.checkpoint import Checkpointer
from kamal_jax.train.job import Frozen, Job, Settings
from kamal_jax.train.loop import EpochBatches, NonFiniteLoss, fit
from kamal_jax.train.state import create_state, make_optimizer
from kamal_jax.train.steps import make_train_step
from kamal_jax.train.trainer import train


def _setup(tmp_path, every=2):
    t1, v1 = toy.teacher('t1', 'cifar_resnet8', 7, {'a': (0, 5)}, seed=1)
    t2, v2 = toy.teacher('t2', 'cifar_resnet8', 7, {'a': (2, 7)}, seed=2)
    stage = toy.stage1([t1, t2])
    tx = make_optimizer(toy.stage_config(), 100)
    state = create_state(jax.random.key(0), stage.student.module, jnp.zeros((1, 12, 12, 3)),
                         stage.init_bridges(jax.random.key(1)), tx)
    mesh = sharding.make_mesh(1)
    step = sharding.jit_train_step(make_train_step(stage.loss, tx), mesh)
    ckpt = Checkpointer(str(tmp_path / 'ckpt'), every, max_to_keep=5)
    batches = EpochBatches({'image': toy.images(16)}, 8, seed=0)
    frozen = sharding.put_replicated({'t1': v1, 't2': v2}, mesh)
    return dict(step=step, state=sharding.put_replicated(state, mesh), frozen=frozen, batches=batches,
                rng=jax.random.key(2), mesh=mesh), ckpt


def test_step_flags_a_non_finite_loss():
    t1, v1 = toy.teacher('t1', 'cifar_resnet8', 7, {'a': (0, 5)}, seed=1)
    stage = toy.stage1([t1])
    tx = make_optimizer(toy.stage_config(), 10)
    state = create_state(jax.random.key(0), stage.student.module, jnp.zeros((1, 12, 12, 3)),
                         stage.init_bridges(jax.random.key(1)), tx)
    batch = {'image': jnp.asarray(toy.images(4))}

    def poisoned(params, batch_stats, frozen, images, batch, rng=None):
        loss, aux = stage.loss(params, batch_stats, frozen, images, batch, rng)
        return loss * jnp.nan, aux
    _, good = jax.jit(make_train_step(stage.loss, tx))(state, {'t1': v1}, batch, jax.random.key(0))
    _, bad = jax.jit(make_train_step(poisoned, tx))(state, {'t1': v1}, batch, jax.random.key(0))
    assert float(good['finite']) == 1.0 and float(bad['finite']) == 0.0


def test_a_nan_is_never_saved_and_the_stop_names_stage_step_and_term(tmp_path):
    # log_every = 3 does not divide checkpoint_every = 2: a check at log steps alone would save the
    # NaN state at step 6 before looking at it; here every save looks first.
    kw, ckpt = _setup(tmp_path)
    inner = kw['step']

    def step(state, frozen, batch, rng):
        state, metrics = inner(state, frozen, batch, rng)
        bad = state.step >= 5  # from step 5 on, the feature term and everything after it are NaN
        nan = jnp.where(bad, jnp.nan, 0.0)
        metrics = {**metrics, 'feature': metrics['feature'] + nan, 'loss': metrics['loss'] + nan,
                   'finite': jnp.where(bad, 0.0, metrics['finite'])}
        return state.replace(params=jax.tree.map(lambda p: p + nan, state.params)), metrics
    kw['step'] = step
    with pytest.raises(NonFiniteLoss, match=r'stage1/a: the feature loss became nan at step 5; the last good '
                                            r'checkpoint \(step 4\) is kept') as err:
        fit(name='stage1/a', num_steps=8, checkpointer=ckpt, log_every=3, **kw)
    assert err.value.step == 5 and err.value.last_good == 4
    ckpt.manager.wait_until_finished()
    assert ckpt.latest_step() == 4 and sorted(ckpt.manager.all_steps()) == [2, 4]
    restored = ckpt.restore(kw['state'])
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(restored.params))
    ckpt.close()


def test_a_jobs_non_finite_stop_carries_its_stage_and_task(tmp_path):
    # The run records which config sections a relaunch may retune from the failure's stage, not its name.
    t1, v1 = toy.teacher('t1', 'cifar_resnet8', 7, {'a': (0, 5)}, seed=1)
    stage = toy.stage1([t1])

    def poisoned(params, batch_stats, frozen, images, batch, rng=None):
        loss, aux = stage.loss(params, batch_stats, frozen, images, batch, rng)
        return loss * jnp.nan, aux
    job = Job('component of a', 'stage1', 'a', stage.student, poisoned, stage.init_bridges(jax.random.key(1)),
              {'image': toy.images(16)}, Frozen.live({'t1': v1}), Settings(toy.stage_config(), 0, log_every=1),
              sharding.make_mesh(1), checkpoints=str(tmp_path / 'ckpt'))
    with pytest.raises(NonFiniteLoss, match=r'component of a: the gradient norm became nan at step 1') as err:
        train(job)
    assert (err.value.stage, err.value.task, err.value.step, err.value.last_good) == ('stage1', 'a', 1, None)
    assert RETUNABLE_SECTIONS[err.value.stage] == ('stage1',)


def test_a_corrupt_latest_checkpoint_falls_back_to_the_one_before(tmp_path, caplog):
    kw, ckpt = _setup(tmp_path)
    state, _ = fit(name='stage1/a', num_steps=4, checkpointer=ckpt, log_every=2, **kw)
    ckpt.close()
    assert sorted(ckpt.manager.all_steps()) == [2, 4]
    # Truncate every array file of step 4.
    step4 = tmp_path / 'ckpt' / '4'
    damaged = 0
    for root, _, files in os.walk(step4):
        for f in files:
            path = os.path.join(root, f)
            if os.path.getsize(path) > 64 and not f.endswith(('.json', 'METADATA')):
                with open(path, 'r+b') as fh:
                    fh.truncate(16)
                damaged += 1
    assert damaged
    again = Checkpointer(str(tmp_path / 'ckpt'), 2, max_to_keep=5)
    with caplog.at_level('WARNING', logger='kamal_jax'):
        restored = again.restore(kw['state'])
    assert int(restored.step) == 2
    assert 'checkpoint step 4' in caplog.text and 'does not restore' in caplog.text
    aside = [d for d in os.listdir(tmp_path / 'ckpt') if d.startswith('corrupt_step_4_')]
    assert len(aside) == 1 and not step4.exists()  # moved aside, not deleted
    assert again.latest_step() == 2
    again.close()
