"""Benchmark `cifar10_overlap`: four CIFAR-10 teachers that know different, overlapping classes, and a
student for classes picked across them (the setting of UHC, Vongkulbhisal et al., CVPR 2019).

    python launch.py --config configs/bench_cifar10_overlap.py --workdir runs/bench_cifar10_overlap

Data: `kamal_cifar10` as in `configs/bench_cifar10_parts.py`. Teachers (trained first by the run
itself, in PyTorch, with labels, each on the training images of its own classes in one half of the
training split, 6 epochs; `WORKDIR/zoo/`), one softmax over the classes it knows, listed by name:

    classes_0_5      cifar_resnet20   airplane automobile bird cat deer dog          half 0
    classes_3_8      cifar_resnet20   cat deer dog frog horse ship                   half 1
    classes_6_9_0_1  cifar_resnet20   frog horse ship truck airplane automobile      half 0
    classes_even     cifar_resnet14   airplane bird deer frog ship                   half 1

Target tasks, picked by class names: `all_ten` (the ten classes) and `picked_four` (cat, dog, horse,
truck). No teacher knows either whole, so the per-teacher recipes cannot run; every teacher knowing
one of a task's classes serves it. The target is one cifar_resnet20 with a head per task (30 epochs of
the 50000 training images, without labels), recipe `unified` (UHC's cross-entropy estimate; an image
the teachers place outside `picked_four` teaches it by the estimated chance that it is one of the four:
`unified.outside = 'weight'`); baselines `naive_union` (each teacher's probabilities on its classes,
averaged) and `supervised` (the same net on the true labels). Scored on the test split, each head on
the images of its classes; the summary scores no teacher (none knows a whole task):
`python -m kamal_jax.benchmarks.unified_targets WORKDIR` scores each teacher on the images of the
classes it knows and each target itself. docs/BENCHMARKS.md ("Teachers that know different
classes") gives the commands and what was measured.

`:reduced` trains on 10000 images for 10 epochs (`budgets.shrink_to_reduced`); `:tiny` is a smoke run
(512 training and 256 test images, one epoch everywhere; its accuracies mean nothing).
"""

import ml_collections

from kamal_jax import budgets

CLASSES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']
PICKED = ['cat', 'dog', 'horse', 'truck']
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

# name: (arch, the classes it knows in logit order, half of the training split it learns from)
TEACHERS = {
    'classes_0_5': ('cifar_resnet20', CLASSES[0:6], 0),
    'classes_3_8': ('cifar_resnet20', CLASSES[3:9], 1),
    'classes_6_9_0_1': ('cifar_resnet20', CLASSES[6:10] + CLASSES[0:2], 0),
    'classes_even': ('cifar_resnet14', CLASSES[0::2], 1),
}


def get_config(arg: str = ''):
    """`:tiny` shrinks data and budgets to a smoke run; `:reduced` to 10000 training images and 10
    epochs (`budgets.shrink_to_reduced`), the zoo and the held-out split as in the full config."""
    if arg not in ('', 'tiny', 'reduced'):
        raise ValueError(f"configs/bench_cifar10_overlap.py takes no argument, 'tiny' or 'reduced', got {arg!r}.")
    c = ml_collections.ConfigDict()
    c.data = dict(name='kamal_cifar10', image_size=(32, 32), mean=MEAN, std=STD, crop_padding=4, flip=True)
    c.zoo = ml_collections.ConfigDict()
    c.zoo.teachers = {}
    c.teachers = {}
    for name, (arch, classes, half) in TEACHERS.items():
        c.zoo.teachers[name] = dict(arch=arch, widths=(), classes=classes, train_fraction=0.5, shard=half, epochs=6,
                                    batch_size=128, lr=0.1, momentum=0.9, weight_decay=5e-4, mean=MEAN, std=STD,
                                    crop_padding=4, flip=True)
        c.teachers[name] = dict(arch=arch, checkpoint='{workdir}/zoo/%s.pth' % name, mean=MEAN, std=STD,
                                classes=classes)
    c.tasks = dict(all_ten=dict(classes=CLASSES), picked_four=dict(classes=PICKED))
    c.target_tasks = ('all_ten', 'picked_four')
    c.recipe = 'unified'
    c.baselines = ('naive_union', 'supervised')
    # The one-stage recipes' optimiser: stage2's (as cifar10_parts), for 30 epochs; no recipe here has a stage 1.
    c.stage1 = dict(arch='cifar_resnet20', batch_size=128)
    c.stage2 = dict(arch='cifar_resnet20', batch_size=128, lr=2e-3)
    c.baseline_stage = dict(epochs=30, temperature=4.0)
    c.eval_batch_size = 500
    c.eval_every = 1000
    if arg == 'tiny':
        c.data.train_split, c.data.eval_split = 'train[:512]', 'test[:256]'
        budgets.shrink_to_tiny(c)
    if arg == 'reduced':
        budgets.shrink_to_reduced(c)
        c.baseline_stage.epochs = 10
        c.baselines = ('naive_union', 'supervised')
    return c
