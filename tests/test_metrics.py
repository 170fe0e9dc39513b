"""Training metrics without TensorBoard: the JSONL fallback holds what TensorBoard would, said once.
A fake step with known metrics drives the real loop, so the window means can be checked exactly."""
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import toy
from kamal_jax.train import metrics as metrics_lib, sharding
from kamal_jax.train.loop import EpochBatches, fit
from kamal_jax.train.metrics import Monitoring, TrainingMetrics
from kamal_jax.train.state import TrainState, learning_rates


@jax.jit
def _step(state, frozen, batch, rng):
    loss = jnp.mean(batch['x'])
    return state.replace(step=state.step + 1), {'loss': loss, 'selected/a_t': loss / 10, 'selected/b_t': 1 - loss / 10,
                                                'finite': jnp.float32(1.0)}


def test_without_tensorboard_metrics_go_to_jsonl_and_it_is_said_once(tmp_path, monkeypatch):
    def no_tensorflow(logdir):
        raise ImportError("No module named 'tensorflow'")
    monkeypatch.setattr(metrics_lib, '_open_tensorboard', no_tensorflow)
    monkeypatch.setattr(metrics_lib, '_said', set())
    warnings = []
    monkeypatch.setattr(metrics_lib.log, 'warning', lambda msg, *a: warnings.append(msg % a if a else msg))
    evaluated = []

    def evaluate(variables):
        evaluated.append(variables)
        return {'a': 0.25 * len(evaluated)}
    batches = EpochBatches({'x': np.arange(16, dtype=np.float32) / 16}, batch_size=4, seed=0)  # 4 steps/epoch
    cfg = toy.stage_config(epochs=2, lr=1e-3, bridge_lr=2e-3, schedule='cosine')
    hooks = TrainingMetrics('stage1/a', Monitoring(str(tmp_path / 'one'), {'stage1': {'lr': 1e-3, 'widths': (8, 16)}},
                                                   evaluate=evaluate, eval_every=3),
                            learning_rates=learning_rates(cfg, 8), variables_of=lambda s: int(s.step), num_steps=8)
    state = TrainState(step=jnp.zeros((), jnp.int32), params={}, batch_stats={}, opt_state=())
    fit(name='stage1/a', step=_step, state=state, frozen={}, batches=batches, num_steps=8, rng=jax.random.key(0),
        mesh=sharding.make_mesh(1), log_every=3, on_log=hooks.on_log, on_step=hooks.on_step)
    hooks.close()
    metrics_lib.Writers(str(tmp_path / 'two')).close()  # the next stage's writers: nothing said again
    assert len(warnings) == 1 and 'TensorBoard events cannot be written' in warnings[0]
    assert not [f for f in os.listdir(tmp_path / 'one') if f.startswith('events.')]
    with open(tmp_path / 'one' / metrics_lib.JSONL) as f:
        records = [json.loads(line) for line in f]
    train = [r for r in records if 'train/loss' in r]
    assert [r['step'] for r in train] == [3, 6, 8]
    losses = [float(np.mean(batches.batch(s)['x'])) for s in range(8)]
    for r, window in zip(train, (losses[0:3], losses[3:6], losses[6:8])):  # means over each window
        assert r['train/loss'] == pytest.approx(np.mean(window), rel=1e-6)
        assert r['selected/a_t'] + r['selected/b_t'] == pytest.approx(1.0)
        # Cosine over 8 steps; the window's last update (step s) used count s - 1.
        assert r['lr/net'] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * (r['step'] - 1) / 8)), rel=1e-5)
        assert r['lr/bridges'] == pytest.approx(2 * r['lr/net'], rel=1e-5) and 'train/finite' not in r
    assert train[-1]['images_per_second'] > 0
    assert [(r['step'], r['eval/a']) for r in records if 'eval/a' in r] == [(3, 0.25), (6, 0.5), (8, 0.75)]
    assert evaluated == [3, 6, 8]  # evaluated on the state of that step
    hparams = json.load(open(tmp_path / 'one' / metrics_lib.HPARAMS))
    assert hparams == {'stage1.lr': 1e-3, 'stage1.widths': '[8, 16]'}


def test_profile_steps_writes_a_trace_of_those_steps_after_the_first_call(tmp_path, caplog):
    import glob
    import gzip
    batches = EpochBatches({'x': np.arange(16, dtype=np.float32) / 16}, batch_size=4, seed=0)
    state = TrainState(step=jnp.zeros((), jnp.int32), params={}, batch_stats={}, opt_state=())
    caplog.set_level('INFO', logger='kamal_jax')
    fit(name='stage1/a', step=_step, state=state, frozen={}, batches=batches, num_steps=8, rng=jax.random.key(0),
        mesh=sharding.make_mesh(1), log_every=4, profile_steps=3, profile_dir=str(tmp_path))
    traces = glob.glob(str(tmp_path / 'plugins' / 'profile' / '*' / '*.trace.json.gz'))
    assert len(traces) == 1 and glob.glob(str(tmp_path / 'plugins' / 'profile' / '*' / '*.xplane.pb'))
    events = json.loads(gzip.open(traces[0]).read())['traceEvents']
    steps = sorted({int(e['args']['step_num']) for e in events if e.get('name') == 'stage1/a' and 'step_num' in e.get('args', {})})
    assert steps == [2, 3, 4]  # the three steps after the first (compiling) one, each annotated
    assert 'profile of steps 2..4' in caplog.text


def test_the_training_log_says_when_held_out_accuracy_is_scored_on_a_subset(tmp_path, monkeypatch, caplog):
    import types

    import ml_collections

    from kamal_jax.data.split import ArraySplit
    from kamal_jax.recipes import context as context_lib
    monkeypatch.setattr(context_lib, 'EVAL_SAMPLES', 3)
    caplog.set_level('INFO', logger='kamal_jax')
    config = toy.run_config(eval_batch_size=2)
    plan = types.SimpleNamespace(target_tasks=('a',), tasks={'a': None})
    net = types.SimpleNamespace(module=types.SimpleNamespace(heads=(('a', 2),)))
    labels = []
    for n in (5, 3):
        split = ArraySplit(images=np.zeros((n, 4, 4, 1), np.uint8), labels={'a': np.zeros(n, np.int64)},
                           label_names={'a': ['x', 'y']}, name='toy', split='test')
        run = context_lib.Run(config, plan, {}, {}, None, split, None, str(tmp_path))
        monitoring = run.monitoring(str(tmp_path / str(n)), net, toy.run_config(eval_every=1))
        assert len(run.held_out_subset.images) == 3
        monitoring = Monitoring(monitoring.logdir, evaluate=lambda v: {'a': 0.5}, eval_every=1,
                                eval_label=monitoring.eval_label)
        TrainingMetrics('target', monitoring, learning_rates={}, variables_of=lambda s: s, num_steps=1,
                        write=False).on_step(1, None)
        labels.append(caplog.records[-1].getMessage())
    assert labels == ['target: step 1 held-out accuracy (3 of 5 images) a=0.5000',
                      'target: step 1 held-out accuracy a=0.5000']


def test_the_learning_rates_of_a_log_line_compile_one_program_per_schedule(tmp_path):
    """Evaluated eagerly, an optax schedule compiles several tiny programs at the first log line
    (or none, where earlier work cached them): exactly one per schedule says it is jitted."""
    from jax._src import dispatch, monitoring as jax_monitoring
    compiled = []

    def on_event(event, duration, **kwargs):
        if event == dispatch.BACKEND_COMPILE_EVENT:
            compiled.append(duration)
    cfg = toy.stage_config(epochs=2, lr=1e-3, bridge_lr=2e-3, schedule='cosine', warmup_steps=5)
    hooks = TrainingMetrics('stage1/a', Monitoring(str(tmp_path)), learning_rates=learning_rates(cfg, 40),
                            variables_of=lambda s: s, num_steps=40, write=False)
    jax_monitoring.register_event_duration_secs_listener(on_event)
    try:
        hooks.on_log(7, {}, float('nan'))
        first = len(compiled)
        hooks.on_log(30, {}, float('nan'))
    finally:
        jax_monitoring.unregister_event_duration_listener(on_event)
    assert (first, len(compiled)) == (2, 2)  # net and bridges; the second line reuses both
