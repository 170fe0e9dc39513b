"""CIFAR ResNets from the wild: option-A/B shortcuts at any depth, checkpoint wrappers, `inspect`.

The PyTorch reference is written here the way the public CIFAR repos write it (He et al.'s
option-A `LambdaLayer` shortcut or a `shortcut`/`downsample` 1x1 conv + BN, classifier `linear`
or `fc`); parity is max relative error (max |diff| / max |ref|) <= 1e-4 on logits and every tap.
"""

import jax
import numpy as np
import pytest

torch = pytest.importorskip('torch')
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from kamal_jax import porting  # noqa: E402
from kamal_jax.porting import CheckpointFormatError, PortingError  # noqa: E402

TOL = 1e-4


class LambdaLayer(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class Block(nn.Module):
    """The public CIFAR BasicBlock; `residual` is its output before the final ReLU (a tap)."""

    def __init__(self, cin, planes, stride, option, shortcut_name):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        short = nn.Sequential()
        if stride != 1 or cin != planes:
            if option == 'A':
                short = LambdaLayer(lambda x: F.pad(x[:, :, ::2, ::2],
                                                    (0, 0, 0, 0, planes // 4, planes // 4)))
            else:
                short = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False),
                                      nn.BatchNorm2d(planes))
        setattr(self, shortcut_name, short)
        self.shortcut_name = shortcut_name

    def residual(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out)) + getattr(self, self.shortcut_name)(x)

    def forward(self, x):
        return F.relu(self.residual(x))


class CifarResNet(nn.Module):
    """akamaster/pytorch_resnet_cifar10's ResNet (option A, `linear`), or option B with names."""

    def __init__(self, depth, num_classes=10, widths=(16, 16, 32, 64), option='A',
                 shortcut_name='shortcut', head_name='linear'):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        cin = widths[0]
        for i, planes in enumerate(widths[1:]):
            blocks = []
            for j in range(n):
                blocks.append(Block(cin, planes, 2 if i > 0 and j == 0 else 1, option, shortcut_name))
                cin = planes
            setattr(self, f'layer{i + 1}', nn.Sequential(*blocks))
        setattr(self, head_name, nn.Linear(cin, num_classes))
        self.head_name, self.stages = head_name, len(widths) - 1
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.kaiming_normal_(m.weight)

    def forward_features(self, x):
        taps = {}
        x = self.bn1(self.conv1(x))
        taps['stem'] = x
        x = F.relu(x)
        for i in range(self.stages):
            layer = getattr(self, f'layer{i + 1}')
            for blk in layer[:-1]:
                x = blk(x)
            x = layer[-1].residual(x)
            taps[f'stage{i + 1}'] = x
            x = F.relu(x)
        x = F.avg_pool2d(x, x.size()[3]).flatten(1)
        return getattr(self, self.head_name)(x), taps

    def forward(self, x):
        return self.forward_features(x)[0]


def _randomise(model, seed=0, size=16):
    """Non-trivial BN affine parameters and running statistics (train-mode passes)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
        model.train()
        for _ in range(2):
            model(torch.randn(8, 3, size, size, generator=gen))
    return model.eval()


def _rel(got, ref):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-12))


def check_parity(module, variables, model, size=16, seed=1):
    """Logits and every tap within TOL relative error; returns the worst error seen."""
    x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        logits_t, taps_t = model.forward_features(x)
    logits_j, taps_j = module.apply(variables, x.numpy().transpose(0, 2, 3, 1), train=False)
    assert np.abs(logits_t.numpy()).max() > 0.1  # not a vacuous comparison
    errors = {'logits': _rel(logits_j, logits_t.numpy())}
    assert sorted(taps_j) == sorted(taps_t)
    for name, ref in taps_t.items():
        errors[name] = _rel(taps_j[name], ref.numpy().transpose(0, 2, 3, 1))
    print(f'max relative error: {max(errors.values()):.2e}')
    assert max(errors.values()) <= TOL, errors
    return max(errors.values())


def _sd(model, prefix=''):
    return {prefix + k: v for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- shortcuts, depths

CASES = [  # (option, depth, widths, shortcut key name, classifier name)
    ('A', 20, (16, 16, 32, 64), 'shortcut', 'linear'),
    ('A', 32, (8, 8, 16, 32), 'shortcut', 'linear'),
    ('A', 44, (16, 16, 32, 64), 'shortcut', 'linear'),
    ('B', 20, (16, 16, 32, 64), 'shortcut', 'linear'),
    ('B', 32, (8, 12, 20, 28), 'downsample', 'fc'),
    ('B', 44, (16, 16, 32, 64), 'downsample', 'classifier'),
]


@pytest.mark.parametrize('option,depth,widths,short,head', CASES)
def test_cifar_resnet_parity_and_inspect(option, depth, widths, short, head, tmp_path):
    torch.manual_seed(depth)
    model = _randomise(CifarResNet(depth, 10, widths, option, short, head), seed=depth)
    path = str(tmp_path / 'teacher.pth')
    torch.save(model.state_dict(), path)
    state = porting.load_state_dict(path)
    found = porting.inspect(state)
    arch = found.matches[0]
    assert arch.arch == f'cifar_resnet{depth}' and arch.widths == widths
    assert dict(arch.options).get('shortcut', 'projection') == (
        'zero_pad' if option == 'A' else 'projection')
    assert arch.num_classes == 10 and arch.family == 'cifar_resnet' and arch.depth == depth
    module, variables = porting.port('auto', state)
    check_parity(module, variables, model)
    # The name alone (widths and shortcut read from the weights) ports it the same way.
    named, same = porting.port(f'cifar_resnet{depth}', state)
    assert named == module
    assert jax.tree.all(jax.tree.map(lambda u, v: bool((u == v).all()), same, variables))


def test_option_a_needs_doubling_widths():
    from kamal_jax import models
    with pytest.raises(ValueError, match=r'option A.*twice as wide.*\[16, 16, 24, 64\]'):
        models.backbone('cifar_resnet20', (16, 16, 24, 64), shortcut='zero_pad')
    # kamal_jax's own nets keep the 1x1 projection shortcut.
    assert models.backbone('cifar_resnet8').shortcut == 'projection'


# ----------------------------------------------------------------------------- wrappers, formats

@pytest.fixture(scope='module')
def small():
    """Two different option-A cifar_resnet8s (weights and EMA weights)."""
    torch.manual_seed(0)
    a = _randomise(CifarResNet(8, 5, (8, 8, 16, 32)), seed=1)
    b = _randomise(CifarResNet(8, 5, (8, 8, 16, 32)), seed=2)
    return a, b


WRAPPED = {
    'prefix module.': lambda sd, ema: _prefixed(sd, 'module.'),
    'prefix model.': lambda sd, ema: _prefixed(sd, 'model.'),
    'prefix net.': lambda sd, ema: _prefixed(sd, 'net.'),
    'prefix backbone.': lambda sd, ema: _prefixed(sd, 'backbone.'),
    'prefix _orig_mod.': lambda sd, ema: _prefixed(sd, '_orig_mod.'),
    'prefix module._orig_mod.': lambda sd, ema: _prefixed(sd, 'module._orig_mod.'),
    'dict state_dict': lambda sd, ema: {'state_dict': sd, 'epoch': 3, 'best_prec1': 91.3},
    'dict net': lambda sd, ema: {'net': sd, 'acc': 90.0},
    'dict state': lambda sd, ema: {'state': sd},
    'dict model': lambda sd, ema: {'model': sd, 'optimizer': {'lr': 0.1}},
    'dict model_state_dict': lambda sd, ema: {'model_state_dict': sd, 'epoch': 7},
    'nested state > model, prefixed': lambda sd, ema: {'state': {'model': _prefixed(sd, 'module.')}},
    'model_ema beside model': lambda sd, ema: {'model': sd, 'model_ema': _prefixed(ema, 'module.')},
    'ema beside state_dict': lambda sd, ema: {'state_dict': sd, 'ema': ema},
}


def _prefixed(sd, prefix):
    return {prefix + k: v for k, v in sd.items()}


@pytest.mark.parametrize('case', sorted(WRAPPED))
def test_wrappers_and_prefixes(case, small, tmp_path):
    a, b = small
    path = str(tmp_path / 'w.pth')
    torch.save(WRAPPED[case](a.state_dict(), b.state_dict()), path)
    module, variables = porting.port_file('auto', path)
    check_parity(module, variables, a)  # the plain weights unless EMA is asked for
    if 'ema' in case:
        module, variables = porting.port_file('auto', path, ema=True)
        check_parity(module, variables, b)
    assert porting.inspect(porting.load_state_dict(path)).matches[0].arch == 'cifar_resnet8'


def test_ema_asked_but_absent(small, tmp_path):
    path = str(tmp_path / 'plain.pth')
    torch.save({'state_dict': small[0].state_dict()}, path)
    with pytest.raises(CheckpointFormatError, match=r'plain\.pth.*no EMA weights.*model_ema'):
        porting.load_state_dict(path, ema=True)


@pytest.mark.parametrize('ext', ['.pth', '.pt', '.th', '.tar', '.bin', '.ckpt', '.safetensors',
                                 '.th (legacy format)'])
def test_extensions(ext, small, tmp_path):
    a = small[0]
    path = str(tmp_path / f'teacher{ext.split()[0]}')
    if ext == '.safetensors':
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in a.state_dict().items()}, path)
    else:  # the pre-1.6 (non-zip) format too, as older CIFAR checkpoints were written
        torch.save({'state_dict': _prefixed(a.state_dict(), 'module.')}, path,
                   _use_new_zipfile_serialization='legacy' not in ext)
    module, variables = porting.port_file('auto', path)
    check_parity(module, variables, a)


def test_refused_formats(small, tmp_path):
    pkl = tmp_path / 'teacher.pkl'
    pkl.write_bytes(b'not read')
    with pytest.raises(CheckpointFormatError, match=r'teacher\.pkl.*refused: plain pickle runs code'):
        porting.load_state_dict(str(pkl))
    h5 = tmp_path / 'teacher.npy'
    h5.write_bytes(b'x')
    with pytest.raises(CheckpointFormatError, match=r'teacher\.npy.*supported formats: .pth .pt .th'):
        porting.load_state_dict(str(h5))
    whole = str(tmp_path / 'whole.th')
    torch.save(nn.Sequential(nn.Linear(2, 2)), whole)  # a pickled module: reading it runs code
    with pytest.raises(CheckpointFormatError, match=r'whole\.th.*cannot be read safely.*would run code'):
        porting.load_state_dict(whole)


# ----------------------------------------------------------------------------- inspect

def _cli(capsys, *args):
    """The CLI in this process (the subprocess run is in test_porting_public_cifar.py)."""
    from kamal_jax.porting.__main__ import main
    capsys.readouterr()
    code = main(list(args))
    return code, capsys.readouterr().out


def test_inspect_nearest_when_nothing_matches(small):
    state = {k: v.numpy() for k, v in small[0].state_dict().items()}
    del state['layer2.0.bn1.running_var']
    found = porting.inspect(state)
    assert not found.matches and found.nearest.arch == 'cifar_resnet8'
    assert found.error.first(1) == ['missing batch_stats/backbone/layer2_0/bn1/var (16,)']
    with pytest.raises(PortingError, match=r'nearest is cifar_resnet8.*1 offending key,.*layer2_0/bn1/var'):
        porting.port('auto', state)
    foreign = {'features.conv.weight': np.zeros((4, 3, 3, 3), np.float32),
               'classifier.weight': np.zeros((5, 4), np.float32)}
    found = porting.inspect(foreign)
    assert not found.matches and found.nearest.arch in porting.detect_lib.FALLBACKS
    assert 'unexpected features.conv.weight (4, 3, 3, 3)' in found.error.first(10 ** 4)


def test_inspect_cli(small, tmp_path, capsys):
    path = str(tmp_path / 'resnet8.th')
    torch.save({'state_dict': _prefixed(small[0].state_dict(), 'module.'), 'best_prec1': 50.0}, path)
    code, out = _cli(capsys, 'inspect', path)
    assert code == 0, out
    assert "under 'state_dict'" in out and 'prefix module. removed' in out
    assert 'cifar_resnet8: cifar_resnet, depth 8, widths 8,8,16,32, 5 classes, shortcut option A' in out
    state = _prefixed(small[0].state_dict(), 'module.')
    state['module.layer9.0.conv1.weight'] = torch.zeros(2, 2, 3, 3)
    torch.save(state, path)
    code, out = _cli(capsys, 'inspect', path)
    assert code == 1
    assert 'nearest: cifar_resnet8' in out and 'unexpected layer9.0.conv1.weight' in out
