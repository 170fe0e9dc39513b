"""Benchmark `imagewoof_parts`: the paper's fine-grained dogs setting on Imagewoof (10 breeds).

    python launch.py --config configs/bench_imagewoof_parts.py --workdir runs/bench_imagewoof_parts
    python launch.py --config configs/bench_imagewoof_parts.py:cpu --workdir runs/bench_imagewoof_parts_cpu

Data: `kamal_imagewoof` read from `imagewoof.tar.gz` in the manual dir (`shared/datasets`, found
automatically), center-cropped and resized to 160x160 (the archive's shorter side is 160 px, so
this is the largest square it holds; the paper's 224 px would only upsample). Official split:
9025 training, 3929 validation images. Tasks: `part_a` (the first five breeds: Shih-Tzu,
Rhodesian ridgeback, beagle, English foxhound, Border terrier) and `part_b` (the other five).

Source nets (trained first by the run itself, in PyTorch, with labels, on disjoint halves of the
training split; `WORKDIR/zoo/`), each one softmax over its main part plus two breeds of the other:

    a_resnet18   resnet18 (ImageNet stem)            part_a + 2 of part_b   -> part_a [0, 5)
    a_resnet34   resnet34, half width                2 of part_b + part_a   -> part_a [2, 7)
    b_resnet18   resnet18                            part_b + 2 of part_a   -> part_b [0, 5)
    b_resnet34   resnet34, half width                2 of part_a + part_b   -> part_b [2, 7)

Amalgamation, without labels, on the training split: one resnet18 component per part, then one
two-head resnet18 target at 0.75 width (stage 2). Baselines as in the other benchmarks.

Sizes. The default is the GPU setting (160 px, 40 teacher epochs, 20 epochs per stage).
`:cpu` is the reduced setting for a 2-core CPU: 64 px, half-width nets, 12 teacher epochs and
5 epochs per stage (its accuracies are far below what the breeds allow at full resolution).
`:tiny` is a smoke run of the same pipeline (a few minutes; its accuracies mean nothing).
"""

import ml_collections

from kamal_jax import budgets

BREEDS = ['Shih-Tzu', 'Rhodesian ridgeback', 'beagle', 'English foxhound', 'Border terrier',
          'Australian terrier', 'golden retriever', 'Old English sheepdog', 'Samoyed', 'dingo']
PART_A, PART_B = BREEDS[:5], BREEDS[5:]
TASKS = {'part_a': PART_A, 'part_b': PART_B}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's statistics

# name: (arch, width scale, output classes in logit order, main task, shard of the training split)
SOURCES = {
    'a_resnet18': ('resnet18', 1.0, PART_A + PART_B[:2], 'part_a', 0),
    'a_resnet34': ('resnet34', 0.5, PART_B[2:4] + PART_A, 'part_a', 1),
    'b_resnet18': ('resnet18', 1.0, PART_B + PART_A[:2], 'part_b', 0),
    'b_resnet34': ('resnet34', 0.5, PART_A[2:4] + PART_B, 'part_b', 1),
}
RESNET_WIDTHS = (64, 64, 128, 256, 512)


def _widths(scale: float) -> tuple[int, ...]:
    return tuple(int(w * scale) for w in RESNET_WIDTHS)


def get_config(arg: str = ''):
    """No argument: the GPU setting; `:cpu`: 64 px, reduced; `:tiny`: smoke run."""
    if arg not in ('', 'cpu', 'tiny'):
        raise ValueError(f"configs/bench_imagewoof_parts.py takes no argument, 'cpu' or 'tiny', got {arg!r}.")
    small = arg in ('cpu', 'tiny')
    size = 64 if small else 160
    scale = 0.5 if small else 1.0  # every net's widths
    c = ml_collections.ConfigDict()
    c.data = dict(name='kamal_imagewoof', eval_split='val', image_size=(size, size), mean=MEAN, std=STD,
                  crop_padding=size // 8, flip=True)

    c.zoo = ml_collections.ConfigDict()
    c.zoo.teachers = {}
    c.teachers = {}
    for name, (arch, width, classes, task, shard) in SOURCES.items():
        widths = _widths(width * scale)
        c.zoo.teachers[name] = dict(arch=arch, widths=widths, classes=classes, train_fraction=0.5, shard=shard,
                                    epochs=12 if small else 40, batch_size=64, lr=0.05, momentum=0.9,
                                    weight_decay=5e-4, mean=MEAN, std=STD, crop_padding=size // 8, flip=True,
                                    warmup_epochs=1)
        start = classes.index(TASKS[task][0])
        c.teachers[name] = dict(arch=arch, widths=widths, checkpoint='{workdir}/zoo/%s.pth' % name, mean=MEAN,
                                std=STD, heads={task: dict(classes=TASKS[task],
                                                           logits=(start, start + len(TASKS[task])))})
    c.target_tasks = ('part_a', 'part_b')
    c.recipe = 'paper'  # kamal_jax.recipes.RECIPES: the paper's two stages

    # The quickstart's recipe: tempered KL on logits, feature matching at 0.1 in stage 2.
    hparams = dict(epochs=5 if small else 20, batch_size=64, lr=2e-3, bridge_lr=2e-3, logit_loss='kl',
                  temperature=4.0)
    c.stage1 = dict(arch='resnet18', widths=_widths(scale), **hparams)
    c.stage2 = dict(arch='resnet18', widths=_widths(0.75 * scale), feature_weight=0.1, **hparams)
    c.baselines = ('average', 'random', 'logits_only', 'one_stage', 'supervised')
    c.baseline_stage = dict(temperature=4.0)  # Hinton et al.'s temperature for 'average'
    c.eval_batch_size = 200
    c.eval_every = 500  # held-out accuracy during training (up to 1000 images; TensorBoard, report)
    if arg == 'tiny':
        c.data.train_split, c.data.eval_split = 'train[:256]', 'val[:128]'
        c.data.image_size, c.data.crop_padding = (32, 32), 4
        for t in c.zoo.teachers.values():
            t.crop_padding, t.warmup_epochs = 4, 0
        budgets.shrink_to_tiny(c)
    return c
