"""The exported student: msgpack and safetensors hold the same arrays, and the README's fine-tune
example (plain Flax + optax on the export) lowers the loss on labelled digits."""
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import numpy as safetensors_np

import kamal_jax
from kamal_jax import export, models
from kamal_jax.tasks import Task

ROOT = os.path.dirname(os.path.dirname(__file__))
HEADS = (('digits_0to4', 5), ('digits_5to9', 5))
TASKS = {t: Task(t, 'multiclass', tuple(str(d + 5 * i) for d in range(5)))
         for i, (t, _) in enumerate(HEADS)}


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """A freshly initialised student, its batch statistics drawn at random too, exported."""
    module = models.multihead('cifar_resnet8', HEADS)
    variables = module.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), train=False)
    paths, treedef = jax.tree_util.tree_flatten_with_path(variables['batch_stats'])
    keys = jax.random.split(jax.random.key(1), len(paths))
    stats = [jax.random.uniform(k, x.shape, x.dtype, *((0.5, 1.5) if path[-1].key == 'var' else (-0.1, 0.1)))
             for k, (path, x) in zip(keys, paths)]
    variables = {**variables, 'batch_stats': jax.tree.unflatten(treedef, stats)}
    directory = str(tmp_path_factory.mktemp('export'))
    export.save_student(directory, arch='cifar_resnet8', widths=(), heads=HEADS, variables=variables,
                        tasks=TASKS, mean=(0.3,) * 3, std=(0.4,) * 3, image_size=(16, 16))
    return directory, variables


def test_safetensors_and_msgpack_load_to_equal_arrays(exported):
    directory, saved = exported
    from_msgpack = kamal_jax.load_student(directory, format='msgpack')
    from_safetensors = kamal_jax.load_student(directory, format='safetensors')
    assert jax.tree.structure(from_safetensors.variables) == jax.tree.structure(from_msgpack.variables)
    for a, b, c in zip(jax.tree.leaves(from_msgpack.variables), jax.tree.leaves(from_safetensors.variables),
                       jax.tree.leaves(saved)):
        assert a.dtype == b.dtype == c.dtype and a.shape == b.shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
    assert from_safetensors.card == from_msgpack.card == json.load(open(os.path.join(directory, 'student.json')))
    images = jax.random.uniform(jax.random.key(2), (4, 16, 16, 3))
    p1, p2 = from_msgpack.predict(images), from_safetensors.predict(images)
    assert set(p1) == {'digits_0to4', 'digits_5to9'}
    for t in p1:
        np.testing.assert_array_equal(np.asarray(p1[t]), np.asarray(p2[t]))


def test_safetensors_names_are_flat_and_readable_without_kamal_jax(exported):
    directory, saved = exported
    flat = safetensors_np.load_file(os.path.join(directory, export.SAFETENSORS_FILE))
    n_leaves = len(jax.tree.leaves(saved))
    assert len(flat) == n_leaves
    assert all(name.split('/')[0] in ('params', 'batch_stats') for name in flat)
    kernel = [n for n in flat if n.startswith('params/') and n.endswith('/kernel')]
    assert kernel and all(flat[n].ndim in (2, 4) for n in kernel)


def test_load_student_without_safetensors_reads_msgpack_and_names_missing_files(exported, tmp_path):
    directory, _ = exported
    only_msgpack = tmp_path / 'old_export'
    only_msgpack.mkdir()
    for name in (export.VARIABLES_FILE, export.CARD_FILE):
        (only_msgpack / name).write_bytes(open(os.path.join(directory, name), 'rb').read())
    student = kamal_jax.load_student(str(only_msgpack))
    assert len(jax.tree.leaves(student.variables)) > 10
    with pytest.raises(FileNotFoundError, match='variables.safetensors'):
        kamal_jax.load_student(str(only_msgpack), format='safetensors')
    with pytest.raises(ValueError, match="format must be one of"):
        kamal_jax.load_student(directory, format='pickle')
    os.remove(only_msgpack / export.VARIABLES_FILE)
    with pytest.raises(FileNotFoundError, match='neither'):
        kamal_jax.load_student(str(only_msgpack))


def test_flatten_refuses_a_name_with_the_separator():
    with pytest.raises(ValueError, match="'a/b'"):
        export.flatten({'params': {'a/b': np.zeros(2)}})


def _readme_finetune_code():
    readme = open(os.path.join(ROOT, 'README.md')).read()
    blocks = [b for b in re.findall(r'```python\n(.*?)```', readme, re.S) if 'def finetune(' in b]
    assert len(blocks) == 1, 'README.md should hold one python block defining finetune(...)'
    return blocks[0]


def test_readme_finetune_example_lowers_the_loss_on_digits(exported):
    from sklearn.datasets import load_digits
    from kamal_jax.data.builders.digits import digits_to_rgb
    directory, saved = exported
    namespace = {}
    exec(compile(_readme_finetune_code(), 'README.md:finetune', 'exec'), namespace)
    digits = load_digits()
    keep = digits.target < 5                                  # digits_0to4: class i is digit i
    images = digits_to_rgb(digits.images[keep][:64]).astype(np.float32) / 255.0
    images = jax.image.resize(images, (len(images), 16, 16, 3), 'bilinear')
    labels = jnp.asarray(digits.target[keep][:64])
    params, losses = namespace['finetune'](directory, 'digits_0to4', [(images, labels)] * 8)
    assert len(losses) == 8 and all(np.isfinite(losses))
    assert losses[-1] < 0.85 * losses[0] and np.all(np.diff(losses) < 0), losses
    assert jax.tree.structure(params) == jax.tree.structure(saved['params'])
