"""Quickstart: four small PyTorch teachers on handwritten digits -> one compact two-task student.

    python launch.py --config configs/quickstart.py --workdir runs/quickstart --config.recipe=product

Offline and self-contained: the data is scikit-learn's bundled `digits` set (1797 real 8x8
scans, shown at 16x16), read through the `kamal_digits` TFDS builder. The run first trains four
teachers in PyTorch (labels are used only there and for scoring), each briefly (6 epochs) on its
own quarter of the training images and on 7 classes: 5 of its task plus 2 auxiliary ones, at
different logit offsets and with different depths (CIFAR ResNet-8 and ResNet-14). Then kamal_jax
ports them and trains the two-task target net on all training images without their labels, by
the recipe `recipe` names: 'product' (the default: the normalised product of each task's
teachers' softened predictions, for 2 x 40 + 40 epochs), 'average' (their mean) or 'paper'
(`--config.recipe=paper`: one component net per task from the least ambiguous teacher per sample,
then the target from the components). Expected: +0.9 / +3.6 points over the best teacher at seed
0, in 9 minutes on 2 CPU cores shared with other jobs (docs/results/quickstart_readme.json). Over
seeds 0-4 on an Intel Xeon the default ended 1.1 / 3.7 points above the best teacher on average
(worst -1.8), 'average' 1.1 / 3.4 (worst -3.1), the paper's recipe 0.0 / -0.4 (worst -7.6); see
docs/BENCHMARKS.md.
"""

import ml_collections

LOW = ['0', '1', '2', '3', '4']
HIGH = ['5', '6', '7', '8', '9']
NORM = dict(mean=(0.3,) * 3, std=(0.4,) * 3)


def _teacher(arch, classes, task, task_classes, shard):
    start = classes.index(task_classes[0])
    return dict(
        zoo=dict(arch=arch, classes=classes, train_fraction=0.25, shard=shard),
        decl=dict(arch=arch, checkpoint='{workdir}/zoo/%s.pth', **NORM,
                  heads={task: dict(classes=task_classes, logits=(start, start + len(task_classes)))}))


TEACHERS = {
    'low_resnet8': _teacher('cifar_resnet8', LOW + ['5', '6'], 'digits_0to4', LOW, 0),
    'low_resnet14': _teacher('cifar_resnet14', ['8', '9'] + LOW, 'digits_0to4', LOW, 1),
    'high_resnet14': _teacher('cifar_resnet14', HIGH + ['0', '1'], 'digits_5to9', HIGH, 0),
    'high_resnet8': _teacher('cifar_resnet8', ['2', '3'] + HIGH, 'digits_5to9', HIGH, 1),
}


def get_config(arg: str = ''):
    """`configs/quickstart.py:tiny` shrinks every budget for a smoke run (under a minute of training).
    Every field not set here takes its default (docs/CONFIG.md)."""
    c = ml_collections.ConfigDict()
    c.data = dict(name='kamal_digits', image_size=(16, 16), crop_padding=2, **NORM)
    c.zoo = dict(teachers={name: dict(t['zoo'], epochs=6, batch_size=32, lr=0.05, momentum=0.9, weight_decay=5e-4,
                                      crop_padding=2, flip=False, **NORM) for name, t in TEACHERS.items()})
    c.teachers = {name: dict(t['decl'], checkpoint=t['decl']['checkpoint'] % name) for name, t in TEACHERS.items()}
    c.target_tasks = ('digits_0to4', 'digits_5to9')
    # kamal_jax.recipes.RECIPES. 'product' (the default: one target from the normalised product of each
    # task's teachers' softened predictions) had the best worst case of five seeds here and led 'average'
    # on every task of the real benchmarks' matrix (docs/BENCHMARKS.md, "The recipe x selector matrix").
    c.recipe = 'product'
    c.stage1 = dict(arch='cifar_resnet8', epochs=40, lr=2e-3, bridge_lr=2e-3)
    # Target widths 1.125x a component's: about 0.63x the two components' parameters (as the paper).
    # Feature matching at 0.1: at weight 1 it outweighed the tempered logit term and cost accuracy.
    c.stage2 = dict(arch='cifar_resnet8', widths=(18, 18, 36, 72), epochs=40, lr=2e-3, bridge_lr=2e-3,
                    feature_weight=0.1)
    c.eval_every = 200  # held-out accuracy during training (TensorBoard and the report)
    if arg == 'tiny':  # the teachers keep their (already short) budget
        c.stage1.epochs = c.stage2.epochs = 8
        c.log_every = 10
        c.eval_every = 50
    elif arg:
        raise ValueError(f"configs/quickstart.py takes no argument or 'tiny', got {arg!r}.")
    return c
