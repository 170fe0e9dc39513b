"""Teacher zoo training on a tiny fake dataset: files, cards, class remapping, skipping, porting."""

import dataclasses
import importlib.util
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip('torch')

from ml_collections import ConfigDict  # noqa: E402

from kamal_jax import config_schema  # noqa: E402
from kamal_jax.zoo import train as zoo_train  # noqa: E402

CLASSES = ['airplane', 'bird', 'cat', 'dog', 'frog', 'ship']


@dataclasses.dataclass
class FakeSplit:
    images: np.ndarray
    labels: dict
    label_names: dict
    name: str = 'fake'
    split: str = 'train'


def _fake(n, seed, split):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), n)
    # Class-dependent colour so that one epoch learns something.
    base = (labels[:, None] * 40 + np.arange(3)[None] * 10) % 256
    images = np.clip(base[:, None, None, :] + rng.integers(-20, 20, (n, 16, 16, 3)), 0, 255)
    return FakeSplit(images.astype(np.uint8), {'label': labels, 'coarse': labels % 2},
                     {'label': list(CLASSES), 'coarse': ['even', 'odd']}, split=split)


def _data():
    return {'train': _fake(96, 0, 'train'), 'eval': _fake(48, 1, 'test')}


def _config():
    return ConfigDict({'zoo': {
        'data': {'name': 'fake', 'train_split': 'train', 'eval_split': 'test', 'split_seed': 3},
        'teachers': {
            't_animals': {'arch': 'cifar_resnet8', 'widths': (8, 8, 16, 16),
                          'classes': ['dog', 'cat', 'bird'], 'train_fraction': 0.5, 'shard': 0,
                          'epochs': 1, 'batch_size': 16, 'lr': 0.05, 'seed': 0,
                          'mean': (0.5, 0.5, 0.5), 'std': (0.25, 0.25, 0.25)},
            't_vehicles': {'arch': 'resnet18_small', 'widths': (8, 8, 8, 16, 16),
                           'classes': ['ship', 'airplane'], 'train_fraction': 0.5, 'shard': 1,
                           'epochs': 1, 'batch_size': 16, 'lr': 0.05, 'seed': 1,
                           'augment': {'crop_padding': 2, 'flip': False}},
        }}})


def test_train_zoo_writes_checkpoints_and_cards(tmp_path, capsys):
    out = str(tmp_path / 'zoo')
    cards = zoo_train.train_zoo(_config(), out, _data())
    assert set(cards) == {'t_animals', 't_vehicles'}
    for name in cards:
        assert os.path.isfile(os.path.join(out, f'{name}.pth'))
        assert os.path.isfile(os.path.join(out, f'{name}.json'))
    card = json.load(open(os.path.join(out, 't_animals.json')))
    assert card == cards['t_animals']
    assert card['arch'] == 'cifar_resnet8' and card['widths'] == [8, 8, 16, 16]
    assert card['num_classes'] == 3 and card['classes'] == ['dog', 'cat', 'bird']
    assert card['label_key'] == 'label'
    assert card['mean'] == [0.5, 0.5, 0.5] and card['std'] == [0.25, 0.25, 0.25]
    assert card['input_size'] == [16, 16]
    assert card['training_data']['shard'] == 0 and card['training_data']['train_fraction'] == 0.5
    assert card['training_data']['split_seed'] == 3
    assert 0 < card['training_data']['num_samples'] <= 48
    assert 0.0 <= card['eval']['accuracy'] <= 1.0 and card['eval_accuracy'] == card['eval']['accuracy']
    eval_labels = _data()['eval'].labels['label']
    assert card['eval']['num_samples'] == int(np.isin(eval_labels, [1, 2, 3]).sum())
    assert card['wall_seconds'] > 0
    assert len(card['checkpoint_sha256']) == 64
    vcard = cards['t_vehicles']
    assert vcard['training']['augment'] == {'crop_padding': 2, 'crop_pad_mode': 'reflect',
                                            'flip': False}
    assert len(vcard['mean']) == 3 and all(s > 0 for s in vcard['std'])  # Computed from the data.
    printed = capsys.readouterr().out
    assert 'epoch 1/1' in printed
    assert re.search(r'\[t_animals\] epoch 1/1: loss .*s, eta 0s', printed)  # progress with an ETA

    # The checkpoint is the twin's state_dict and ports to Flax.
    from kamal_jax import porting
    module, variables = porting.port_file('cifar_resnet8', os.path.join(out, 't_animals.pth'),
                                          widths=card['widths'], input_shape=(1, 16, 16, 3))
    assert module.num_classes == 3

    # Second run: both teachers skipped, nothing retrained.
    mtime = os.path.getmtime(os.path.join(out, 't_animals.pth'))
    again = zoo_train.train_zoo(_config(), out, _data())
    assert again == cards
    assert os.path.getmtime(os.path.join(out, 't_animals.pth')) == mtime
    assert capsys.readouterr().out.count('skipped') == 2


def test_shards_are_disjoint_and_labels_remapped():
    data = _data()['train']
    s0 = zoo_train.teacher_settings('a', {'arch': 'cifar_resnet8', 'classes': CLASSES,
                                          'train_fraction': 0.5, 'shard': 0})
    s1 = dict(s0, shard=1)
    i0, l0 = zoo_train.select(data, s0, 'a', fraction=0.5, shard=0, split_seed=3)
    i1, l1 = zoo_train.select(data, s1, 'a', fraction=0.5, shard=1, split_seed=3)
    assert len(i0) + len(i1) == len(data.labels['label'])
    assert not set(i0) & set(i1)
    s = zoo_train.teacher_settings('b', {'arch': 'cifar_resnet8', 'classes': ['frog', 'airplane']})
    idx, labels = zoo_train.select(data, s, 'b')
    raw = data.labels['label'][idx]
    assert set(raw) <= {0, 4}
    np.testing.assert_array_equal(labels, np.where(raw == 4, 0, 1))


@pytest.mark.parametrize('field,value,match', [
    ('classes', ['dog', 'unicorn'], r"teachers\.bad\.classes names \['unicorn'\]"),
    ('arch', 'vgg11', r'teachers\.bad\.arch.*supported'),
    ('shard', 2, r'teachers\.bad\.shard'),
    ('label_key', 'colour', r'teachers\.bad\.label_key'),
])
def test_config_errors_name_the_field(tmp_path, field, value, match):
    tc = {'arch': 'cifar_resnet8', 'classes': ['dog', 'cat'], 'train_fraction': 0.5, 'epochs': 1}
    tc[field] = value
    with pytest.raises(zoo_train.ZooConfigError, match=match):
        zoo_train.train_zoo({'teachers': {'bad': tc}}, str(tmp_path), _data())


CLI_CONFIG = """
import ml_collections


def get_config():
    return ml_collections.ConfigDict({'zoo': {
        'data': {'name': 'kamal_digits', 'data_dir': DATA_DIR},
        'teachers': {
            'low': {'arch': 'cifar_resnet8', 'widths': (8, 8, 8, 8), 'classes': ['0', '1', '2'],
                    'epochs': 1, 'batch_size': 64, 'lr': 0.05},
            'high': {'arch': 'cifar_resnet8', 'widths': (8, 8, 8, 8), 'classes': ['9', '8'],
                     'epochs': 1, 'batch_size': 64, 'lr': 0.05, 'crop_padding': 0},
        }}})
"""


def test_cli_trains_on_kamal_digits(tmp_path):
    """End to end: config file -> TFDS loader (TensorFlow after torch) -> two teachers."""
    pytest.importorskip('tensorflow_datasets')
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = tmp_path / 'digits_zoo.py'
    config.write_text(CLI_CONFIG.replace('DATA_DIR', repr(str(tmp_path / 'tfds'))))
    out = tmp_path / 'zoo'
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get('PYTHONPATH', ''))
    cmd = [sys.executable, '-m', 'kamal_jax.zoo', f'--config={config}', f'--out={out}']
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'epoch 1/1' in proc.stdout
    low = json.loads((out / 'low.json').read_text())
    high = json.loads((out / 'high.json').read_text())
    assert low['classes'] == ['0', '1', '2'] and low['num_classes'] == 3
    assert high['classes'] == ['9', '8'] and high['input_size'] == [8, 8]
    assert high['training_data']['dataset'] == 'kamal_digits'
    assert high['eval']['split'] == 'test' and 80 <= high['eval']['num_samples'] <= 95
    assert (out / 'low.pth').is_file() and (out / 'high.pth').is_file()
    proc = subprocess.run(cmd + ['--only=high'], capture_output=True, text=True, env=env, cwd=root,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '[high] skipped' in proc.stdout and '[low]' not in proc.stdout

    # The JSON form launch.py writes: data and seed at the top level, '' for default dirs.
    spec = {'data': {'name': 'kamal_digits', 'data_dir': str(tmp_path / 'tfds'), 'manual_dir': '',
                     'train_split': 'train', 'eval_split': 'test', 'image_size': [16, 16]},
            'seed': 5,
            'teachers': {'mid': {'arch': 'cifar_resnet8', 'widths': [8, 8, 8, 8],
                                 'classes': ['4', '5'], 'train_fraction': 0.5, 'shard': 1,
                                 'epochs': 1, 'batch_size': 64, 'lr': 0.05}}}
    (tmp_path / 'zoo_config.json').write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, '-m', 'kamal_jax.zoo',
                           f'--config_json={tmp_path / "zoo_config.json"}', f'--out={out}'],
                          capture_output=True, text=True, env=env, cwd=root, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    mid = json.loads((out / 'mid.json').read_text())
    assert mid['input_size'] == [16, 16] and mid['training']['seed'] == 5
    assert mid['training_data']['split_seed'] == 5 and mid['training_data']['shard'] == 1


def test_attribute_teacher_has_one_softmax_per_head(tmp_path):
    """A teacher with two label keys: one fc, two slices, summed cross-entropies, card per head."""
    heads = [('label', ['dog', 'cat', 'bird']), ('coarse', ['odd', 'even'])]
    tc = {'arch': 'cifar_resnet8', 'widths': (8, 8, 16, 16), 'heads': heads, 'train_fraction': 0.5,
          'shard': 1, 'epochs': 1, 'batch_size': 16, 'lr': 0.05, 'mean': (0.5,) * 3, 'std': (0.25,) * 3}
    config = ConfigDict({'zoo': {'data': {'name': 'fake', 'split_seed': 3}, 'teachers': {'attr': tc}}})
    card = zoo_train.train_zoo(config, str(tmp_path), _data())['attr']
    assert card['num_classes'] == 5 and card['label_key'] is None
    assert card['heads'] == {
        'label': {'label_key': 'label', 'classes': ['dog', 'cat', 'bird'], 'logits': [0, 3]},
        'coarse': {'label_key': 'coarse', 'classes': ['odd', 'even'], 'logits': [3, 5]}}
    assert card['classes'] == ['label:dog', 'label:cat', 'label:bird', 'coarse:odd', 'coarse:even']
    # 'coarse' labels every sample, so the teacher sees its whole shard and all of the eval split.
    assert card['training_data']['num_samples'] == 48 and card['eval']['num_samples'] == 48
    per_head = card['eval']['accuracy_per_head']
    assert set(per_head) == {'label', 'coarse'} and all(0.0 <= a <= 1.0 for a in per_head.values())
    assert card['eval']['accuracy'] == pytest.approx((per_head['label'] + per_head['coarse']) / 2)
    assert sum(card['training_data']['class_counts']['coarse']) == 48
    from kamal_jax import porting
    module, _ = porting.port_file('cifar_resnet8', str(tmp_path / 'attr.pth'), widths=card['widths'],
                                  input_shape=(1, 16, 16, 3))
    assert module.num_classes == 5

    # Labels per head: -1 where the sample has none of the head's classes; remapped otherwise.
    s = zoo_train.teacher_settings('attr', tc)
    split = _data()['eval']
    idx, labels = zoo_train.select_heads(split, s, 'attr')
    raw = split.labels['label'][idx]
    expected = np.select([raw == 3, raw == 2, raw == 1], [0, 1, 2], -1)
    np.testing.assert_array_equal(labels[:, 0], expected)
    np.testing.assert_array_equal(labels[:, 1], np.where(raw % 2 == 1, 0, 1))

    # The loss is the sum of the heads' cross-entropies, each over the samples it labels.
    logits = torch.randn(4, 5)
    y = torch.tensor([[0, 1], [-1, 0], [2, 1], [-1, 1]])
    expected = (torch.nn.functional.cross_entropy(logits[[0, 2], :3], y[[0, 2], 0])
                + torch.nn.functional.cross_entropy(logits[:, 3:], y[:, 1]))
    got = zoo_train._heads_loss(logits, y, s['heads'], 0.0)
    assert float(got) == pytest.approx(float(expected), rel=1e-6)

    with pytest.raises(zoo_train.ZooConfigError, match=r'teachers\.bad\.heads must be a list'):
        zoo_train.teacher_settings('bad', dict(tc, heads={'label': ['dog', 'cat']}))
    with pytest.raises(zoo_train.ZooConfigError, match=r'teachers\.bad\.heads\.coarse names'):
        zoo_train.train_zoo({'teachers': {'bad': dict(tc, heads=[('coarse', ['odd', 'prime'])])}},
                            str(tmp_path / 'bad'), _data())


def _config_module(path):
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('name', ['cifar10_parts', 'utkface_attributes', 'imagewoof_parts'])
def test_zoo_configs_are_the_benchmarks_teachers(name):
    """`configs/zoo/NAME.py` trains exactly the teachers `configs/bench_NAME.py` declares."""
    root = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'configs')
    zoo = _config_module(os.path.join(root, 'zoo', f'{name}.py')).get_config('tiny')
    bench = _config_module(os.path.join(root, f'bench_{name}.py')).get_config('tiny')
    resolved = config_schema.resolve(bench)
    assert zoo.data.to_dict() == resolved.data.to_dict() and zoo.seed == resolved.seed
    assert zoo.teachers.to_dict() == bench.zoo.teachers.to_dict() and len(zoo.teachers) >= 3
    assert set(bench.teachers) == set(zoo.teachers)  # every teacher amalgamated is one trained
    assert all(t.checkpoint == '{workdir}/zoo/%s.pth' % n for n, t in bench.teachers.items())
    assert all(t.epochs == 1 for t in zoo.teachers.values())  # the argument reached the benchmark
