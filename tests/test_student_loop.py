"""The student in the loop (recipe `student_loop`): the target is refitted only at its scheduled steps,
each refit is the teachers' target with the student's vote in it, a run killed between two refits
(or inside one) resumes to the uninterrupted run's parameters bit for bit, and the recipe runs end to
end through the pipeline with its entry in the summary.

The runs are the quickstart cut to one task, two random-weight teachers (no zoo), 128 training
images and 16 steps of batch 32 (refits at steps 8, 10 and 13), as tests/test_run_faults.py's.
"""
import json
import logging
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import toy
from kamal_jax import config_schema, models, pipeline, recipes, selection
from kamal_jax.data.datasets import ArraySplit
from kamal_jax.layout import Layout
from kamal_jax.recipes import student_loop
from kamal_jax.tasks import ConfigError, Plan, Task, TeacherSpec
from kamal_jax.train import evaluate as eval_lib, sharding
from kamal_jax.train.augment import cutout
from kamal_jax.train.nets import Net

STEPS, REFITS = 16, [8, 10, 13]  # 4 epochs of 128 images at batch 32; start 0.5, 3 refits


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    out = tmp_path_factory.mktemp('teachers')
    toy.write_random_teachers(out)
    return out


def tiny_config(checkpoints, **loop):
    c = toy.one_task_config(checkpoints, 'student_loop')
    c.baseline_stage = dict(epochs=4, student_loop=dict(refits=3, **loop))
    return c


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def _run_logged(config, workdir) -> tuple[dict, str]:
    handler, logger = _Lines(), logging.getLogger('kamal_jax')
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        return pipeline.run(config, workdir), '\n'.join(handler.lines)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _export(workdir):
    from safetensors.numpy import load_file
    return load_file(os.path.join(workdir, 'export', 'variables.safetensors'))


def _dirs(workdir):
    return Layout(workdir).recipe('student_loop', True).one_stage()


@pytest.fixture(scope='module')
def reference(checkpoints, tmp_path_factory):
    """The uninterrupted run: its workdir, summary and log."""
    workdir = str(tmp_path_factory.mktemp('reference') / 'run')
    summary, text = _run_logged(tiny_config(checkpoints), workdir)
    return workdir, summary, text


# ----------------------------------------------------------------------------- the schedule and the refits

def test_the_schedule_splits_the_rest_of_the_budget_evenly():
    assert student_loop.schedule(STEPS, 0.5, 3) == tuple(REFITS)
    assert student_loop.schedule(100, 0.5, 4) == (50, 62, 75, 87)
    assert student_loop.schedule(10, 0.3, 7) == (3, 4, 5, 6, 7, 8, 9)  # every step after the start
    with pytest.raises(ConfigError, match=r'baseline_stage\.student_loop\.refits = 8 after step 3 of 10'):
        student_loop.schedule(10, 0.3, 8)


def test_refits_happen_at_their_scheduled_steps_only_and_move_the_target(reference):
    workdir, _, text = reference
    dirs = _dirs(workdir)
    assert dirs.refit_steps() == REFITS
    assert re.findall(r'target: refit (\d)/3 at step (\d+)', text) == [('1', '8'), ('2', '10'), ('3', '13')]
    # One segment per refit: the first trains as `product` (teachers live), the others from the stored targets.
    assert re.findall(r'target: steps (\d+)\.\.(\d+)', text) == [('0', '8'), ('8', '10'), ('10', '13'),
                                                                  ('13', '16')]
    targets = []
    for step in REFITS:
        with np.load(dirs.refit(step)) as stored:
            assert stored.files == ['digits_0to4']
            t = stored['digits_0to4']
        assert t.shape == (128, 5) and t.dtype == np.float32
        np.testing.assert_allclose(t.sum(-1), 1.0, rtol=1e-5)
        targets.append(t)
    # The teachers' part is fixed: what changes from one refit to the next is the student's vote.
    for a, b in zip(targets, targets[1:]):
        assert np.abs(a - b).max() > 1e-3


def _toy_run(tmp_path, **loop):
    """A Run of one 5-class task taught by two toy teachers, on 12 images, for `Refits` alone."""
    a, a_vars = toy.teacher('a_t', 'cifar_resnet8', 7, {'a': (0, 5)}, seed=3)
    b, b_vars = toy.teacher('b_t', 'cifar_resnet8', 6, {'a': (1, 6)}, seed=4)
    specs = tuple(TeacherSpec(t.name, t.arch, str(tmp_path / f'{t.name}.pth'), t.heads) for t in (a, b))
    plan = Plan({'a': Task('a', 'multiclass', tuple('01234'))}, specs, ('a',))
    config = toy.run_config(baseline_stage=dict(temperature=2.0, student_loop=loop), eval_batch_size=8)
    train = ArraySplit(toy.images(12), {}, {}, 'toy', 'train')
    run = recipes.Run(config, plan, {'a_t': a, 'b_t': b}, {'a_t': a_vars, 'b_t': b_vars}, train, train,
                      sharding.make_mesh(1), str(tmp_path / 'run'))
    student = Net('target', 'cifar_resnet8', models.multihead('cifar_resnet8', [('a', 5)]), toy.MEAN, toy.STD)
    variables = student.module.init(jax.random.key(7), jnp.zeros((1, 12, 12, 3)))
    return run, student, variables


@pytest.mark.parametrize('weight', [0.0, 1.0, 0.5])
def test_a_refit_is_the_product_of_the_teachers_and_the_student_as_one_more_voter(tmp_path, weight):
    run, student, variables = _toy_run(tmp_path, student_weight=weight)
    cfg = recipes.one_stage_config(run.config)
    dirs = run.layout.recipe('student_loop', True).one_stage()
    refits = student_loop.Refits(run, student, cfg, dirs)
    got = refits.refit(5, variables, '1/1')['a']
    teachers = [eval_lib.predict(t, run.frozen[t.name], run.train.images, 8)['a'] for t in run.groups()[0][1]]
    z = np.mean(np.stack(teachers), 0) / 2.0  # the product: softmax of the mean logits / T
    product = np.exp(z - z.max(-1, keepdims=True))
    product /= product.sum(-1, keepdims=True)
    s = eval_lib.predict(student, variables, run.train.images, 8)['a'] / 2.0
    log_student = s - s.max(-1, keepdims=True) - np.log(np.exp(s - s.max(-1, keepdims=True)).sum(-1, keepdims=True))
    want = np.exp((2 * np.log(product) + weight * log_student) / (2 + weight))  # two teachers, one student
    want /= want.sum(-1, keepdims=True)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    if weight == 0.0:
        np.testing.assert_allclose(got, product, rtol=1e-5, atol=1e-6)
    else:  # the student's vote moved it
        assert np.abs(got - product).max() > 1e-3
    assert dirs.refit_steps() == [5]
    np.testing.assert_array_equal(refits.load(5)['a'], got)  # stored as computed


def test_a_student_that_learnt_the_target_leaves_it_where_it_is():
    """The refit's fixed point: a student whose softened prediction is the teachers' target votes for
    it, and the target stays (a plain product would square it at every refit); where the student
    disagrees, the target moves towards it, the more the heavier its vote."""
    target = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], np.float32)
    agreeing = 4.0 * np.log(target)  # softmax(logits / 4) is the target
    for weight in (0.5, 1.0, 3.0):
        np.testing.assert_allclose(selection.with_student_vote(target, agreeing, 4.0, weight, 2), target, rtol=1e-5)
    disagreeing = 4.0 * np.log(target[:, ::-1])
    moved = [np.asarray(selection.with_student_vote(target, disagreeing, 4.0, w, 2))[0, 2] for w in (0.0, 1.0, 3.0)]
    assert moved[0] == pytest.approx(0.1, rel=1e-5) and moved[0] < moved[1] < moved[2] < 0.7


def test_cutout_sets_one_square_per_image_to_the_fill():
    x = jnp.asarray(np.random.default_rng(0).uniform(0.2, 1.0, (64, 8, 8, 3)), jnp.float32)
    out = np.asarray(cutout(jax.random.key(0), x, fraction=0.5, fill=(0.0, 0.1, 0.0)))
    changed = np.any(out != np.asarray(x), axis=-1)  # [64, 8, 8]
    counts = changed.sum((1, 2))
    assert counts.max() == 16 and counts.min() >= 4  # a 4x4 square, clipped at the border
    assert np.all(out[changed] == np.array([0.0, 0.1, 0.0], np.float32))
    for mask in changed:  # one rectangle: its rows and columns span exactly the changed pixels
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        assert mask.sum() == len(rows) * len(cols) and np.all(np.diff(rows) == 1) and np.all(np.diff(cols) == 1)
    assert len({tuple(np.argwhere(m)[0]) for m in changed}) > 10  # placed anew for each image


# ----------------------------------------------------------------------------- resume and the pipeline

def test_a_run_killed_inside_a_refit_and_between_two_resumes_to_the_same_parameters(checkpoints, reference,
                                                                                     tmp_path, monkeypatch):
    from kamal_jax.train import batches as batches_lib
    workdir, config = str(tmp_path / 'run'), tiny_config(checkpoints)
    real_refit, real_next = student_loop.Refits.refit, batches_lib.BatchStream.next

    def refit(self, step, variables, which):
        if step == 10:  # step 10's checkpoint is saved, its targets not yet
            raise RuntimeError('killed while refitting')
        return real_refit(self, step, variables, which)
    monkeypatch.setattr(student_loop.Refits, 'refit', refit)
    with pytest.raises(RuntimeError, match='killed while refitting'):
        pipeline.run(config, workdir)
    assert _dirs(workdir).refit_steps() == [8]
    monkeypatch.setattr(student_loop.Refits, 'refit', real_refit)

    def next_batch(self, step):
        if step == 12:  # steps 1..12 trained (12 saved: checkpoint_every = 3), between the refits at 10 and 13
            raise RuntimeError('killed between two refits')
        return real_next(self, step)
    monkeypatch.setattr(batches_lib.BatchStream, 'next', next_batch)
    with pytest.raises(RuntimeError, match='killed between two refits'):
        pipeline.run(config, workdir)
    assert _dirs(workdir).refit_steps() == [8, 10]
    monkeypatch.undo()
    _, text = _run_logged(config, workdir)
    assert 'target: steps 12..13 (4 per epoch, batch 32) [resumed]' in text
    assert f'the targets of the refit at step 10, from {_dirs(workdir).refit(10)}' in text
    assert re.findall(r'target: refit (\d)/3 at step (\d+)', text) == [('3', '13')]
    assert _dirs(workdir).refit_steps() == REFITS
    for step in REFITS:  # the same targets as the uninterrupted run's
        with np.load(_dirs(workdir).refit(step)) as got, np.load(_dirs(reference[0]).refit(step)) as want:
            np.testing.assert_array_equal(got['digits_0to4'], want['digits_0to4'])
    got, want = _export(workdir), _export(reference[0])
    assert set(got) == set(want) and len(got) > 10
    for key in got:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_the_recipe_end_to_end_through_the_pipeline(reference):
    workdir, summary, _ = reference
    on_disk = json.load(open(os.path.join(workdir, 'summary.json')))
    assert on_disk == json.loads(json.dumps(summary))
    target = summary['models']['target']
    assert target['role'] == 'target' and target['epochs'] == 4 and target['refit_steps'] == REFITS
    assert target['method'].startswith("the student in the loop: the teachers' product target, refitted 3 times")
    assert set(target['accuracy']) == {'digits_0to4'} and 0.0 <= target['accuracy']['digits_0to4'] <= 1.0
    assert {'low_resnet8', 'low_resnet14'} <= set(summary['models'])
    assert 'kl/digits_0to4' in target['final_train_metrics']
    assert os.path.isfile(os.path.join(workdir, 'export', 'variables.safetensors'))


@pytest.mark.parametrize('loop, message', [
    (dict(start=1.0), r'baseline_stage\.student_loop\.start must be between 0 and 1'),
    (dict(start=0.0), r'baseline_stage\.student_loop\.start must be > 0'),
    (dict(refits=0), r'baseline_stage\.student_loop\.refits must be >= 1'),
    (dict(combiner='oracle'), r"baseline_stage\.student_loop\.combiner = 'oracle' is unknown; valid combiners: "
                              r'average, product'),
    (dict(cutout=1.0), r'baseline_stage\.student_loop\.cutout must be at least 0 and under 1'),
    (dict(refits=9), r'baseline_stage\.student_loop\.refits = 9 after step 8 of 16 leaves a segment without a '
                     r'step'),
])
def test_bad_values_are_one_sentence_before_any_work(checkpoints, tmp_path, loop, message):
    config = tiny_config(checkpoints)
    config.baseline_stage.student_loop.update(loop)
    with pytest.raises(ConfigError, match=message) as err:
        pipeline.run(config, str(tmp_path / 'run'))
    assert '\n' not in str(err.value)
    assert not (tmp_path / 'run').exists()
