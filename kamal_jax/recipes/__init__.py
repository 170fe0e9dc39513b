"""Recipes: the paper's two stages and every comparison, one small entry each.

A recipe turns the ported teachers and the unlabelled training images into one net of the target's
architecture (`config.stage2.arch` and `widths`, one head per target task). `config.recipe` (default
`DEFAULT_RECIPE`) is the run's main recipe; `config.baselines` lists more to train on the same data, scored
on the same held-out images and entered in the summary as `baseline_<name>`:

  paper        the paper: per sample the teacher `stage1.selector` picks (least entropy), through
               bridges and logits, into one component net per task; then the target from them.
  random       the two stages with a random teacher per sample (what selection is worth).
  logits_only  the two stages without transfer bridges (feature_weight = 0 in both stages).
  one_stage    the target learns straight from the source nets: per task stage 1's distillation
               into the shared trunk and that task's head, all tasks in one loss.
  average      Hinton-style multi-teacher KD in one stage: per head, KL (x T^2) from the mean of the
               task's teachers' softmax(logits / T); logits only (T: the one-stage budget's
               `temperature`).
  product      as `average`, from the normalised product of the teachers' softened predictions
               (softmax of their mean logits / T): a class wins only if no teacher rules it out.
  student_loop the student in the loop: as `product` (`baseline_stage.student_loop.combiner`) for the
               first `student_loop.start` share of the steps, then at `student_loop.refits` steps every
               training image's target is refitted on its clean view from the teachers and the student as
               one more voter (the geometric mean of their target and the student's softened prediction,
               the student weighed as `student_weight` teachers),
               learnt between refits under the run's crop and flip plus a cutout square
               (`student_loop.cutout`); `kamal_jax.recipes.student_loop`.
  supervised   the target on the true training labels (the upper reference; it sees labels).
  dawid_skene  as `average`, from a label model's posterior: a confusion matrix per teacher, fitted
               by EM on the training images without labels (`selection.COMBINERS['dawid_skene']`,
               default hyper-parameters; `kamal_jax.label_models`), computed once per training view.
  unified      teachers that know different classes: per head, KL from UHC's cross-entropy estimate of
               the distribution whose restrictions are every serving teacher's softmax
               (`kamal_jax.unified`), computed once per training view; `unified.outside` weighs the
               images the teachers place outside the task. Needs no teacher that knows all classes.
  naive_union  as `unified`, from the naive extension (each teacher's probabilities on its classes,
               zero elsewhere, averaged).

Two-stage recipes use `config.stage1` and `config.stage2` (changed as the entry says); one-stage
ones the budget of `one_stage.one_stage_config` (T x stage1.epochs + stage2.epochs for T target
tasks: the epochs a two-stage run spends over all its nets). Adding a recipe is one entry in `RECIPES`.
"""

from __future__ import annotations

from kamal_jax.recipes.context import Outcome, Run, Scored
from kamal_jax.recipes.one_stage import Labelled, OneStage, one_stage_config, task_label_arrays
from kamal_jax.recipes.student_loop import StudentLoop
from kamal_jax.recipes.two_stage import TwoStage
from kamal_jax.recipes.unified import Unified

# The best label-free recipe measured (docs/BENCHMARKS.md, "The recipe x selector matrix"): the
# recipe of a config that names none. 'paper' runs the paper's two stages.
DEFAULT_RECIPE = 'product'

RECIPES = {
    'paper': TwoStage('two stages, the teacher stage1.selector picks per sample'),
    'random': TwoStage('two stages, a random teacher per sample',
                       stage1={'selector': 'random', 'selection': 'online'}),
    'logits_only': TwoStage('two stages without transfer bridges (logits only)',
                            stage1={'feature_weight': 0.0}, stage2={'feature_weight': 0.0}),
    'one_stage': OneStage('one stage from the source nets, {selection} {selector} selection'),
    'average': OneStage('multi-teacher KD, averaged soft targets, T={temperature:g}', combine='average'),
    'product': OneStage('multi-teacher KD, product of the teachers\' soft targets, T={temperature:g}',
                        combine='product'),
    'student_loop': StudentLoop('the student in the loop: the teachers\' {combiner} target, refitted {refits} times '
                                'from {start:g} of the steps with the student as a voter (weight {weight:g}), '
                                'cutout {cutout:g}, T={temperature:g}'),
    'supervised': Labelled('cross-entropy on the true training labels'),
    'dawid_skene': OneStage('multi-teacher KD, Dawid-Skene posterior of the teachers, T={temperature:g}',
                            combine='dawid_skene'),
    'unified': Unified("UHC's cross-entropy estimate over teachers that know different classes, "
                       'T={temperature:g}, outside: {outside}', estimate='cross_entropy'),
    'naive_union': Unified('the naive extension over teachers that know different classes, T={temperature:g}, '
                           'outside: {outside}', estimate='naive'),
}


# The config sections a job's settings come from, by the job's stage: what a relaunch after a
# non-finite loss in that stage may retune (`workdir.RETUNABLE_FIELDS` of each).
RETUNABLE_SECTIONS = {'stage1': ('stage1',), 'stage2': ('stage2',), 'one_stage': ('stage2', 'baseline_stage')}


def run_recipe(name: str, run: Run, main: bool) -> Outcome:
    """Trains (or resumes) recipe `name`: as the run's main recipe in the workdir itself, or as a
    baseline in WORKDIR/baselines/NAME (`Layout.recipe`)."""
    return RECIPES[name].run(run, name, main)


__all__ = ['DEFAULT_RECIPE', 'Outcome', 'RECIPES', 'RETUNABLE_SECTIONS', 'Run', 'Scored', 'one_stage_config',
           'run_recipe', 'task_label_arrays']
