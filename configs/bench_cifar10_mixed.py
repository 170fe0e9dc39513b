"""Benchmark `cifar10_mixed`: cifar10_parts with a pool of four kinds of PyTorch teacher.

    python launch.py --config configs/bench_cifar10_mixed.py:cpu --workdir runs/bench_cifar10_mixed_cpu

Data and tasks as `configs/bench_cifar10_parts.py`: `kamal_cifar10` from `cifar10.tar.gz` in the
manual dir (`shared/datasets`, found automatically); `part_a` (airplane, automobile, bird, cat,
deer) and `part_b` (dog, frog, horse, ship, truck).

Source nets, trained first by the run itself (PyTorch, with labels, disjoint halves of the
training split; `WORKDIR/zoo/`), one of each way a teacher reaches kamal_jax:

    a_resnet20a   cifar_resnet20_a: option-A (zero-pad) shortcuts   ported natively (arch 'auto')
    a_vit         timm vit_tiny, patch 4 at 32 px (8 under `:cpu`)   ported natively (timm rule table)
    b_shufflenet  torchvision:shufflenet_v2_x0_5                     generic path (ATen graph in JAX)
    b_mobilenet   torch:torchvision.models:mobilenet_v3_small        generic path, a factory by module path

Each is one softmax over its main part plus two classes of the other part. Amalgamation without
labels, then scored on the test split, with the same baselines as cifar10_parts.

`:cpu` is a reduced budget meant to fit one session on a 2-core CPU: the teachers train on their
halves of the split as above but 5 epochs, the ViT at patch 8; amalgamation on 10000 training
images, 4 epochs per stage; baselines `average`, `one_stage` (12 epochs: 2 x 4 + 4) and
`supervised`. Its result is in docs/BENCHMARKS.md ("cifar10_mixed").
No argument: all 50000 images, 12 teacher epochs and 15 per stage. `:tiny` is a smoke run (512
images, one epoch everywhere; its accuracies mean nothing): it ran end to end, zoo, both stages
and the five baselines, in 27 minutes on a 2-core CPU shared with other work.
"""

import ml_collections

from kamal_jax import budgets

PART_A = ['airplane', 'automobile', 'bird', 'cat', 'deer']
PART_B = ['dog', 'frog', 'horse', 'ship', 'truck']
TASKS = {'part_a': PART_A, 'part_b': PART_B}
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
VIT = {'img_size': 32, 'patch_size': 4}

# name: (zoo arch, zoo kwargs, teacher arch, output classes in logit order, main task, shard, lr)
SOURCES = {
    'a_resnet20a': ('cifar_resnet20_a', {}, 'auto', PART_A + ['dog', 'frog'], 'part_a', 0, 0.1),
    'a_vit': ('timm:vit_tiny_patch16_224', VIT, 'vit_tiny_patch4_32', ['horse', 'ship'] + PART_A,
              'part_a', 1, 0.01),
    'b_shufflenet': ('torchvision:shufflenet_v2_x0_5', {}, 'torchvision:shufflenet_v2_x0_5',
                     PART_B + ['airplane', 'automobile'], 'part_b', 0, 0.1),
    'b_mobilenet': ('torch:torchvision.models:mobilenet_v3_small', {}, 'torch:torchvision.models:mobilenet_v3_small',
                    ['bird', 'cat'] + PART_B, 'part_b', 1, 0.05),
}
ALL = ('average', 'random', 'logits_only', 'one_stage', 'supervised')
# `cpu`: the ViT at patch 8 (16 tokens, about a quarter of patch 4's cost), the rivals that matter.
BUDGETS = {'': dict(train_limit=0, zoo_epochs=12, epochs=15, vit_patch=4, baselines=ALL),
           'cpu': dict(train_limit=10000, zoo_epochs=5, epochs=4, vit_patch=8,
                       baselines=('average', 'one_stage', 'supervised')),
           'tiny': dict(train_limit=0, zoo_epochs=1, epochs=1, vit_patch=4, baselines=ALL)}


def _sources(vit_patch):
    """SOURCES with the ViT at `vit_patch` pixels per patch."""
    if vit_patch == VIT['patch_size']:
        return SOURCES
    zoo_arch, _, _, *rest = SOURCES['a_vit']
    vit = (zoo_arch, {**VIT, 'patch_size': vit_patch}, f'vit_tiny_patch{vit_patch}_32', *rest)
    return {**SOURCES, 'a_vit': vit}


def _teachers(c, zoo_epochs, vit_patch):
    for name, (zoo_arch, kwargs, arch, classes, task, shard, lr) in _sources(vit_patch).items():
        c.zoo.teachers[name] = dict(arch=zoo_arch, kwargs=kwargs, classes=classes, train_fraction=0.5,
                                    shard=shard, epochs=zoo_epochs, batch_size=128, lr=lr, momentum=0.9,
                                    weight_decay=5e-4, mean=MEAN, std=STD, crop_padding=4, flip=True)
        start = classes.index(TASKS[task][0])
        factory_kwargs = {'num_classes': len(classes)} if arch.startswith('torch:') else {}
        c.teachers[name] = dict(arch=arch, checkpoint='{workdir}/zoo/%s.pth' % name, mean=MEAN, std=STD,
                                kwargs=factory_kwargs,
                                heads={task: dict(classes=TASKS[task],
                                                  logits=(start, start + len(TASKS[task])))})


def get_config(arg: str = ''):
    """No argument: full budget; `:cpu`: one CPU session; `:tiny`: smoke run."""
    if arg not in BUDGETS:
        raise ValueError(f"configs/bench_cifar10_mixed.py takes no argument, 'cpu' or 'tiny', got {arg!r}.")
    budget = BUDGETS[arg]
    c = ml_collections.ConfigDict()
    c.data = dict(name='kamal_cifar10', image_size=(32, 32), mean=MEAN, std=STD, crop_padding=4, flip=True,
                  train_limit=budget['train_limit'])
    c.zoo = ml_collections.ConfigDict()
    c.zoo.teachers = {}
    c.teachers = {}
    _teachers(c, budget['zoo_epochs'], budget['vit_patch'])
    c.target_tasks = ('part_a', 'part_b')
    c.recipe = 'paper'
    hparams = dict(epochs=budget['epochs'], batch_size=128, lr=2e-3, bridge_lr=2e-3)
    c.stage1 = dict(arch='cifar_resnet20', **hparams)
    c.stage2 = dict(arch='cifar_resnet20', widths=(20, 20, 40, 80), feature_weight=0.1, **hparams)
    c.baselines = budget['baselines']
    c.baseline_stage = dict(temperature=4.0)
    c.eval_batch_size = 500
    c.eval_every = 1000
    if arg == 'tiny':
        c.data.train_split, c.data.eval_split = 'train[:512]', 'test[:256]'
        budgets.shrink_to_tiny(c)
    return c
