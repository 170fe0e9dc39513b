"""Benchmark `utkface_attributes`: the paper's CelebA-style attribute setting on UTKFace faces.

    python launch.py --config configs/bench_utkface_attributes.py --workdir runs/bench_utkface_attributes

Data: `kamal_utkface` read from `utkface.tar.gz` in the manual dir (`shared/datasets`, found
automatically), shown at 64x64 (the archive holds 96x96 faces); its seeded 80/20 split gives about
18960 training and 4740 test images. Attributes: gender (2 classes), race (5), age_group (4).

Source nets (trained first by the run itself, in PyTorch, with labels, each on its own third of
the training split, 15 epochs; `WORKDIR/zoo/`) are attribute nets: one `fc` with a softmax head
per attribute, each covering two of the three attributes, with different architectures and inputs:

    gr_resnet18  resnet18 (32..256 wide), 64 px     gender [0, 2)  + race [2, 7)
    ga_resnet20  cifar_resnet20, 32 px input        age_group [0, 4) + gender [4, 6)
    ra_resnet34  resnet34 (16..128 wide), 64 px     race [0, 5)  + age_group [5, 9)

The user asks for gender and race: two teachers per task. Amalgamation, without labels, on the
whole training split, 12 epochs in stage 1 and 14 in stage 2: one resnet18 component (16..128
wide) per attribute (stage 1), then one two-head resnet18 target with widths 20..160 (about 0.8x
the parameters of the two components together; stage 2). Losses: the quickstart's recipe (KL at
temperature 4 on logits, feature matching weight 1 in stage 1 and 0.1 in stage 2). Scored on the
test split. Baselines (see `kamal_jax.recipes`): average, random, logits_only, one_stage,
supervised.

The budgets were cut to fit a 2-core CPU; docs/BENCHMARKS.md gives the measured wall times.
`configs/bench_utkface_attributes.py:tiny` is a smoke run of the same pipeline (512 training and
256 test images, one epoch everywhere; a few minutes, mostly compilation); its accuracies mean
nothing.
"""

import ml_collections

from kamal_jax import budgets

GENDER = ['male', 'female']
RACE = ['White', 'Black', 'Asian', 'Indian', 'Others']
AGE_GROUP = ['0-19', '20-39', '40-59', '60+']
ATTRIBUTES = {'gender': GENDER, 'race': RACE, 'age_group': AGE_GROUP}
# A fixed normalisation for every net (not measured on the data).
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)

# name: (arch, widths, input size (() = the data's), attributes in logit order, shard of thirds)
SOURCES = {
    'gr_resnet18': ('resnet18', (32, 32, 64, 128, 256), (), ('gender', 'race'), 0),
    'ga_resnet20': ('cifar_resnet20', (), (32, 32), ('age_group', 'gender'), 1),
    'ra_resnet34': ('resnet34', (16, 16, 32, 64, 128), (), ('race', 'age_group'), 2),
}


def get_config(arg: str = ''):
    """`configs/bench_utkface_attributes.py:tiny` shrinks data and budgets to a smoke run; `:reduced` to the
    selection matrix's budget (10000 training images, 5 + 5 epochs; `budgets.shrink_to_reduced`)."""
    if arg not in ('', 'tiny', 'reduced'):
        raise ValueError(f"configs/bench_utkface_attributes.py takes no argument, 'tiny' or 'reduced', got {arg!r}.")
    c = ml_collections.ConfigDict()
    c.data = dict(name='kamal_utkface', image_size=(64, 64), mean=MEAN, std=STD, crop_padding=4, flip=True)

    c.zoo = ml_collections.ConfigDict()
    c.zoo.teachers = {}
    c.teachers = {}
    for name, (arch, widths, size, attributes, shard) in SOURCES.items():
        heads = [(a, ATTRIBUTES[a]) for a in attributes]  # a list: the order of the logits
        c.zoo.teachers[name] = dict(arch=arch, widths=widths, input_size=size or None, heads=heads,
                                    train_fraction=1 / 3, shard=shard, epochs=15, batch_size=64, lr=0.05,
                                    momentum=0.9, weight_decay=5e-4, mean=MEAN, std=STD, crop_padding=4,
                                    flip=True)
        decl, start = {}, 0
        for a in attributes:
            decl[a] = dict(label_key=a, classes=ATTRIBUTES[a],
                           logits=(start, start + len(ATTRIBUTES[a])))
            start += len(ATTRIBUTES[a])
        c.teachers[name] = dict(arch=arch, widths=widths, input_size=size, checkpoint='{workdir}/zoo/%s.pth' % name,
                                mean=MEAN, std=STD, heads=decl)
    c.target_tasks = ('gender', 'race')
    c.recipe = 'paper'  # kamal_jax.recipes.RECIPES: the paper's two stages

    # The quickstart's recipe: tempered KL on logits, feature matching at 0.1 in stage 2.
    hparams = dict(lr=2e-3, bridge_lr=2e-3)
    c.stage1 = dict(arch='resnet18', widths=(16, 16, 32, 64, 128), epochs=12, **hparams)
    c.stage2 = dict(arch='resnet18', widths=(20, 20, 40, 80, 160), feature_weight=0.1, epochs=14,
                                     **hparams)
    c.baselines = ('average', 'random', 'logits_only', 'one_stage', 'supervised')
    c.baseline_stage = dict(temperature=4.0)  # Hinton et al.'s temperature for 'average'
    c.eval_batch_size = 250
    c.eval_every = 1000  # held-out accuracy during training (up to 1000 images; TensorBoard, report)
    if arg == 'tiny':
        c.data.train_split, c.data.eval_split = 'train[:512]', 'test[:256]'
        budgets.shrink_to_tiny(c)
    if arg == 'reduced':
        budgets.shrink_to_reduced(c)
    return c
