"""Small nets and stages shared by the tests (random weights, tiny images)."""
import importlib.util
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from kamal_jax import config_schema, models
from kamal_jax.train.nets import Net
from kamal_jax import selection
from kamal_jax.train.objectives import Distill, LossWeights, make_pairs

MEAN, STD = (0.5,) * 3, (0.5,) * 3


def stage_config(**overrides):
    """A resolved stage section (stage2 when a stage2-only field is given, else stage1): small nets,
    MSE logits, a checkpoint every 2 steps with no time floor."""
    cfg = dict(arch='cifar_resnet8', epochs=2, batch_size=8, logit_loss='mse', temperature=1.0, checkpoint_every=2,
               checkpoint_min_interval_s=0.0)
    cfg.update(overrides)
    section = 'stage2' if 'component_cache' in overrides else 'stage1'
    return config_schema.stage_config(section, **cfg)


def run_config(**tree):
    """A resolved run config for tests that call the pipeline's parts directly: `tree`'s fields over
    the defaults, a placeholder teacher and task where it declares none. A stage section keeps only
    its own fields (a stage1 section given as stage2 drops stage1's selector and the like)."""
    base = {'data': {'name': 'toy'}, 'target_tasks': ('a',),
            'teachers': {'t': dict(checkpoint='t.pth', mean=MEAN, std=STD,
                                   heads={'a': dict(classes=list('01234'), logits=(0, 5))})}}
    for key, value in tree.items():
        value = value.to_dict() if hasattr(value, 'to_dict') else value
        if key in ('stage1', 'stage2', 'baseline_stage'):
            value = {k: v for k, v in dict(value).items() if k in config_schema.SCHEMA.fields[key].fields}
        if key == 'data':
            value = {**base['data'], **dict(value)}
        base[key] = value
    return config_schema.resolve(base)


def teacher(name, arch, num_classes, heads, seed, size=12, widths=None):
    net = Net(name, arch, models.classifier(arch, num_classes, widths), MEAN, STD, heads=heads)
    variables = net.module.init(jax.random.key(seed), jnp.zeros((1, size, size, 3)))
    return net, variables


def uniform_teacher(name, arch, num_classes, heads, seed, size=12):
    """Its classifier is zero: every sample gets uniform logits (maximal ambiguity)."""
    net, variables = teacher(name, arch, num_classes, heads, seed, size)
    fc = jax.tree.map(jnp.zeros_like, variables['params']['fc'])
    variables = {**variables, 'params': {**variables['params'], 'fc': fc}}
    return net, variables


def student(task='a', n=5, arch='cifar_resnet8'):
    return Net(f'component_{task}', arch, models.multihead(arch, [(task, n)]), MEAN, STD)


def stage1(teachers, task='a', n=5, selector='least_entropy', **kw):
    """Stage 1's loss for one component net; `selector` by name, other fields as `Distill`'s."""
    s = student(task, n)
    pairs = {t.name: make_pairs(t, s, None) for t in teachers}
    return Distill.component(task, s, teachers, pairs, LossWeights(), selector=selection.get(selector), **kw)


def images(n=16, size=12, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def quickstart_config(arg='tiny', recipe='paper'):
    """configs/quickstart.py's config (for validation tests), with the paper's two stages as the
    main recipe unless `recipe` says otherwise (the quickstart's own default is 'product')."""
    spec = importlib.util.spec_from_file_location(
        'quickstart', os.path.join(os.path.dirname(os.path.dirname(__file__)), 'configs', 'quickstart.py'))
    quickstart = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quickstart)
    config = quickstart.get_config(arg)
    config.recipe = recipe
    return config


def write_random_teachers(out, extra: str = '') -> None:
    """Two cifar_resnet8 PyTorch checkpoints of 7 classes (random weights, seeds 0 and 1) as
    `out/t0.pth` and `out/t1.pth`, written in a separate process (the tests' process keeps torch out);
    `extra` is more code for that process (torch imported)."""
    code = f'''
import torch, torchvision
from kamal_jax import torch_models
for seed in (0, 1):
    torch.manual_seed(seed)
    torch.save(torch_models.build('cifar_resnet8', 7).state_dict(), {str(out)!r} + f'/t{{seed}}.pth')
{extra}
'''
    subprocess.run([sys.executable, '-c', code], check=True, cwd=os.path.dirname(os.path.dirname(__file__)))


def one_task_config(checkpoints, recipe: str, steps_per_checkpoint: int = 3):
    """The quickstart cut to one task, two random-weight teachers of `write_random_teachers` (no zoo),
    128 training images, one epoch of batch 32 per stage, a checkpoint every `steps_per_checkpoint`
    steps: a whole run in seconds, for the tests of faults and resumes."""
    c = quickstart_config(recipe=recipe)
    c.target_tasks = ('digits_0to4',)
    for name in ('high_resnet8', 'high_resnet14'):
        del c.teachers[name]
    for name in list(c.zoo.teachers):
        del c.zoo.teachers[name]
    for i, name in enumerate(('low_resnet8', 'low_resnet14')):
        c.teachers[name].arch = 'cifar_resnet8'
        c.teachers[name].checkpoint = str(checkpoints / f't{i}.pth')
    c.data.train_limit, c.data.eval_limit = 128, 64
    for stage in (c.stage1, c.stage2):
        stage.epochs, stage.batch_size, stage.checkpoint_every, stage.checkpoint_min_interval_s = \
            1, 32, steps_per_checkpoint, 0.0
    c.log_every, c.eval_every = 4, 0
    return c
