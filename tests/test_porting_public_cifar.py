"""A teacher in the public CIFAR ResNet layout, trained here, ported with `--arch auto`.

The layout is akamaster/pytorch_resnet_cifar10's: option-A shortcuts, classifier `linear`, a
DataParallel `module.` prefix, `{'epoch', 'state_dict', 'best_prec1'}` saved with torch's pre-1.6
format as a `.th`. The net is trained for a few dozen steps on synthetic 10-class images (8x8, so
it takes seconds). PyTorch's training differs across machines, so a rare image can land on a
near-tie between two classes, where float32 rounding alone may flip the prediction: the ported
Flax net must match PyTorch's logits closely, predict the same class on every image that is not
such a tie, and score within one image per tie (0.05 points each) on the same 2000 test images.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip('torch')

from flax import serialization  # noqa: E402
import jax  # noqa: E402

from kamal_jax import porting  # noqa: E402
from kamal_jax.tasks import TeacherSpec  # noqa: E402
from kamal_jax.teachers import load_teacher  # noqa: E402
from test_porting_cifar import CifarResNet  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE, CLASSES = 8, 10


def _images(n, seed, templates):
    """Class templates (2x2 colour blocks, upsampled) under random contrast and heavy noise."""
    g = np.random.default_rng(seed)
    y = g.integers(0, CLASSES, n)
    x = templates[y] * g.uniform(0.6, 1.4, (n, 1, 1, 1)) + g.normal(0, 1.5, (n, 3, SIZE, SIZE))
    return x.astype(np.float32), y


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    g = np.random.default_rng(0)
    templates = np.kron(g.normal(0, 1, (CLASSES, 3, 2, 2)), np.ones((1, 1, 4, 4))) * 0.5
    x_train, y_train = _images(4096, 1, templates)
    x_test, y_test = _images(2000, 2, templates)
    torch.manual_seed(0)
    model = CifarResNet(20, CLASSES)  # option A, `linear`, 16/32/64 wide
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    model.train()
    for _ in range(40):
        idx = torch.randint(0, len(x_train), (32,))
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x_train[idx])),
                                                 torch.from_numpy(y_train[idx]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    path = str(tmp_path_factory.mktemp('akamaster') / 'resnet20.th')
    state = {f'module.{k}': v for k, v in model.state_dict().items()}  # DataParallel
    torch.save({'epoch': 40, 'state_dict': state, 'best_prec1': 55.0}, path,
               _use_new_zipfile_serialization=False)
    with torch.no_grad():
        logits = model(torch.from_numpy(x_test)).numpy()
    return path, x_test, y_test, logits


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
    return subprocess.run([sys.executable, '-m', 'kamal_jax.porting', *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=300)


def _accuracy(logits, labels):
    return 100.0 * float(np.mean(np.argmax(logits, -1) == labels))


TIE = 1e-3  # a top-2 logit margin below this can flip under float32 rounding


def _clear(logits):
    """Which images PyTorch predicts with a top-2 margin wide enough not to flip on rounding."""
    top2 = np.sort(logits, -1)[:, -2:]
    return top2[:, 1] - top2[:, 0] > TIE


def test_public_layout_ports_with_auto_and_scores_like_pytorch(trained, tmp_path):
    path, x_test, y_test, logits_t = trained
    top2 = np.sort(logits_t, -1)[:, -2:]
    clear = _clear(logits_t)
    assert np.median(top2[:, 1] - top2[:, 0]) > 0.5 and clear.mean() > 0.99, 'train longer'
    acc_t = _accuracy(logits_t, y_test)
    assert 30 < acc_t < 99, acc_t  # trained, and the comparison is not all-correct

    out = tmp_path / 'ported'
    proc = _cli('--arch', 'auto', '--checkpoint', path, '--out', str(out), '--resolution', str(SIZE))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'auto: cifar_resnet20' in proc.stdout and 'option A' in proc.stdout
    meta = json.loads((out / 'teacher.json').read_text())
    assert meta['arch'] == 'cifar_resnet20' and meta['requested_arch'] == 'auto'
    architecture = porting.Architecture.from_json(meta['architecture'])
    assert dict(architecture.options) == {'shortcut': 'zero_pad'}
    module = porting.build(architecture)
    variables = serialization.msgpack_restore((out / 'variables.msgpack').read_bytes())
    logits_j, _ = jax.jit(lambda v, x: module.apply(v, x, train=False))(
        variables, x_test.transpose(0, 2, 3, 1))
    acc_j = _accuracy(np.asarray(logits_j), y_test)
    print(f'accuracy on {len(y_test)} test images: PyTorch {acc_t:.2f}, ported {acc_j:.2f}; '
          f'{int(np.sum(np.argmax(logits_j, -1) != np.argmax(logits_t, -1)))} predictions differ; '
          f'max |logit diff| {float(np.abs(np.asarray(logits_j) - logits_t).max()):.2e}')
    logits_j = np.asarray(logits_j)
    np.testing.assert_allclose(logits_j, logits_t, atol=1e-3 * np.abs(logits_t).max())
    np.testing.assert_array_equal(np.argmax(logits_j, -1)[clear], np.argmax(logits_t, -1)[clear])
    assert abs(acc_j - acc_t) <= 0.05 * max(1, int(np.sum(~clear))) + 1e-9

    proc = _cli('inspect', path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "under 'state_dict'" in proc.stdout and 'beside epoch, best_prec1' in proc.stdout
    assert ('cifar_resnet20: cifar_resnet, depth 20, widths 16,16,32,64, 10 classes, shortcut '
            'option A' in proc.stdout)


def test_teacher_config_arch_auto(trained, tmp_path):
    """`arch='auto'` in a teacher entry: the Net reports the resolved arch, before and after caching."""
    path, x_test, _, logits_t = trained
    spec = TeacherSpec(name='r20', arch='auto', checkpoint=path, heads={'cifar': (0, CLASSES)})
    images = x_test[:256].transpose(0, 2, 3, 1)
    for _ in range(2):  # ports, then reads the cache
        net, variables = load_teacher(spec, str(tmp_path / 'teachers'), (SIZE, SIZE))
        assert net.arch == 'cifar_resnet20' and net.module.backbone.shortcut == 'zero_pad'
        logits, _ = net.apply_eval(variables, images)
        clear = _clear(logits_t[:256])
        assert clear.sum() >= 250
        np.testing.assert_array_equal(np.argmax(np.asarray(logits['cifar']), -1)[clear],
                                      np.argmax(logits_t[:256], -1)[clear])
    assert json.loads((tmp_path / 'teachers' / 'r20.json').read_text())['architecture']['arch'] == \
        'cifar_resnet20'
