"""Benchmark `cifar10_parts`: CIFAR-10 cut into two parts of 5 classes, four heterogeneous source nets.

    python launch.py --config configs/bench_cifar10_parts.py --workdir runs/bench_cifar10_parts

Data: `kamal_cifar10` read from `cifar10.tar.gz` in the manual dir (`shared/datasets`, found
automatically; set `--config.data.manual_dir` otherwise). Tasks: `part_a` (airplane, automobile,
bird, cat, deer) and `part_b` (dog, frog, horse, ship, truck).

Source nets (trained first by the run itself, in PyTorch, with labels, on disjoint halves of the
training split, 6 epochs each; `WORKDIR/zoo/`): each is one softmax over its main part plus 2-3
auxiliary classes of the other part, at different logit offsets:

    a_resnet20   cifar_resnet20                    part_a + dog, frog            -> part_a [0, 5)
    a_resnet18   resnet18_small (16..128 wide)     horse, ship, truck + part_a   -> part_a [3, 8)
    b_resnet32   cifar_resnet32                    part_b + airplane, automobile -> part_b [0, 5)
    b_resnet20   cifar_resnet20                    bird, cat, deer + part_b      -> part_b [3, 8)

Amalgamation, without labels, on all 50000 training images, 15 epochs per stage: one
cifar_resnet20 component per part (stage 1), then a two-head cifar_resnet20 target with widths
20/20/40/80 (0.78x the parameters of the two components together; stage 2). Losses: the
quickstart's recipe (KL at temperature 4 on logits, feature matching weight 1 in stage 1 and 0.1
in stage 2). Scored on the whole test split (10000 images). Baselines (see `kamal_jax.recipes`):
average, random, logits_only, one_stage, supervised, on the same images.

Why this budget: 20000 images x 8 epochs left the target 2.7 / 1.6 points under the best teacher,
and 50000 x 10 with 18/18/36/72 left it 0.5 / 0.1 under (docs/BENCHMARKS.md). On a 2-core CPU the
two stages take about 4 hours (about 160 img/s in stage 1); docs/BENCHMARKS.md gives the measured
wall times. `configs/bench_cifar10_parts.py:tiny` is a smoke run of the same pipeline (512
training and 256 test images, one epoch everywhere; a few minutes, mostly compilation); its
accuracies mean nothing.
"""

import ml_collections

from kamal_jax import budgets

PART_A = ['airplane', 'automobile', 'bird', 'cat', 'deer']
PART_B = ['dog', 'frog', 'horse', 'ship', 'truck']
TASKS = {'part_a': PART_A, 'part_b': PART_B}
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

# name: (arch, widths, output classes in logit order, main task, shard of the training split)
SOURCES = {
    'a_resnet20': ('cifar_resnet20', (), PART_A + ['dog', 'frog'], 'part_a', 0),
    'a_resnet18': ('resnet18_small', (16, 16, 32, 64, 128), ['horse', 'ship', 'truck'] + PART_A, 'part_a', 1),
    'b_resnet32': ('cifar_resnet32', (), PART_B + ['airplane', 'automobile'], 'part_b', 0),
    'b_resnet20': ('cifar_resnet20', (), ['bird', 'cat', 'deer'] + PART_B, 'part_b', 1),
}


def get_config(arg: str = ''):
    """`configs/bench_cifar10_parts.py:tiny` shrinks data and budgets to a smoke run; `:reduced` to the
    selection matrix's budget (10000 training images, 5 + 5 epochs; `budgets.shrink_to_reduced`)."""
    if arg not in ('', 'tiny', 'reduced'):
        raise ValueError(f"configs/bench_cifar10_parts.py takes no argument, 'tiny' or 'reduced', got {arg!r}.")
    c = ml_collections.ConfigDict()
    c.data = dict(name='kamal_cifar10', image_size=(32, 32), mean=MEAN, std=STD, crop_padding=4, flip=True)

    c.zoo = ml_collections.ConfigDict()
    c.zoo.teachers = {}
    c.teachers = {}
    for name, (arch, widths, classes, task, shard) in SOURCES.items():
        c.zoo.teachers[name] = dict(arch=arch, widths=widths, classes=classes, train_fraction=0.5, shard=shard,
                                    epochs=6, batch_size=128, lr=0.1, momentum=0.9, weight_decay=5e-4,
                                    mean=MEAN, std=STD, crop_padding=4, flip=True)
        start = classes.index(TASKS[task][0])
        c.teachers[name] = dict(arch=arch, widths=widths, checkpoint='{workdir}/zoo/%s.pth' % name, mean=MEAN,
                                std=STD, heads={task: dict(classes=TASKS[task],
                                                           logits=(start, start + len(TASKS[task])))})
    c.target_tasks = ('part_a', 'part_b')
    c.recipe = 'paper'  # kamal_jax.recipes.RECIPES: the paper's two stages

    # The quickstart's recipe: tempered KL on logits, feature matching at 0.1 in stage 2.
    hparams = dict(epochs=15, batch_size=128, lr=2e-3, bridge_lr=2e-3)
    c.stage1 = dict(arch='cifar_resnet20', **hparams)
    c.stage2 = dict(arch='cifar_resnet20', widths=(20, 20, 40, 80), feature_weight=0.1, **hparams)
    c.baselines = ('average', 'random', 'logits_only', 'one_stage', 'supervised')
    c.baseline_stage = dict(temperature=4.0)  # Hinton et al.'s temperature for 'average'
    c.eval_batch_size = 500
    c.eval_every = 1000  # held-out accuracy during training (up to 1000 images; TensorBoard, report)
    if arg == 'tiny':
        c.data.train_split, c.data.eval_split, c.data.train_limit = 'train[:512]', 'test[:256]', 0
        budgets.shrink_to_tiny(c)
    if arg == 'reduced':
        budgets.shrink_to_reduced(c)
    return c
