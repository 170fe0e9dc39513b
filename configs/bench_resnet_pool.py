"""Benchmark `resnet_pool`: the default recipe with a pool of four deep teachers, live or cached.

    python launch.py --config configs/bench_resnet_pool.py --workdir runs/bench_resnet_pool

cifar10_parts' two tasks (`part_a`: airplane, automobile, bird, cat, deer; `part_b`: dog, frog,
horse, ship, truck) taught by four option-A CIFAR ResNets (zero-pad shortcuts, as
akamaster/pytorch_resnet_cifar10 trains them; ported with arch 'auto') of depths 20 to 56, which
the run trains itself first in PyTorch (`WORKDIR/zoo/`), each on its half of the training split:

    a_resnet20   part_a + dog, frog            -> part_a [0, 5)
    a_resnet44   horse, ship, truck + part_a   -> part_a [3, 8)
    b_resnet32   part_b + airplane, automobile -> part_b [0, 5)
    b_resnet56   bird, cat, deer + part_b      -> part_b [3, 8)

Deep teachers make a live step of the default recipe (`product`, one stage, a two-head ResNet-20
target) spend most of its time in the teachers: the case the teacher logits cache
is for.

`:reduced` trains the students on 10000 images (`budgets.shrink_to_reduced`); `:tiny` is a smoke
run whose accuracies mean nothing.
"""

import ml_collections

from kamal_jax import budgets

PART_A = ['airplane', 'automobile', 'bird', 'cat', 'deer']
PART_B = ['dog', 'frog', 'horse', 'ship', 'truck']
TASKS = {'part_a': PART_A, 'part_b': PART_B}
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

# name: (zoo arch, output classes in logit order, main task, shard of the training split)
SOURCES = {
    'a_resnet20': ('cifar_resnet20_a', PART_A + ['dog', 'frog'], 'part_a', 0),
    'a_resnet44': ('cifar_resnet44_a', ['horse', 'ship', 'truck'] + PART_A, 'part_a', 1),
    'b_resnet32': ('cifar_resnet32_a', PART_B + ['airplane', 'automobile'], 'part_b', 0),
    'b_resnet56': ('cifar_resnet56_a', ['bird', 'cat', 'deer'] + PART_B, 'part_b', 1),
}


def get_config(arg: str = ''):
    """`:tiny` shrinks data and budgets to a smoke run; `:reduced` to 10000 training images."""
    if arg not in ('', 'tiny', 'reduced'):
        raise ValueError(f"configs/bench_resnet_pool.py takes no argument, 'tiny' or 'reduced', got {arg!r}.")
    c = ml_collections.ConfigDict()
    c.data = dict(name='kamal_cifar10', image_size=(32, 32), mean=MEAN, std=STD, crop_padding=4, flip=True)
    c.zoo = ml_collections.ConfigDict()
    c.zoo.teachers = {}
    c.teachers = {}
    for name, (arch, classes, task, shard) in SOURCES.items():
        c.zoo.teachers[name] = dict(arch=arch, classes=classes, train_fraction=0.5, shard=shard, epochs=6,
                                    batch_size=128, lr=0.1, momentum=0.9, weight_decay=5e-4, mean=MEAN, std=STD,
                                    crop_padding=4, flip=True)
        start = classes.index(TASKS[task][0])
        c.teachers[name] = dict(arch='auto', checkpoint='{workdir}/zoo/%s.pth' % name, mean=MEAN, std=STD,
                                heads={task: dict(classes=TASKS[task], logits=(start, start + len(TASKS[task])))})
    c.target_tasks = ('part_a', 'part_b')
    c.recipe = 'product'
    hparams = dict(epochs=15, batch_size=128, lr=2e-3, bridge_lr=2e-3)
    c.stage1 = dict(arch='cifar_resnet20', **hparams)
    c.stage2 = dict(arch='cifar_resnet20', **hparams)
    c.baselines = ('supervised',)
    c.baseline_stage = {}
    c.eval_batch_size = 500
    if arg == 'tiny':
        c.data.train_split, c.data.eval_split, c.data.train_limit = 'train[:512]', 'test[:256]', 0
        budgets.shrink_to_tiny(c)
    if arg == 'reduced':
        budgets.shrink_to_reduced(c)
    return c
