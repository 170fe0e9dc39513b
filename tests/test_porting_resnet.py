"""PyTorch ResNet -> Flax porting: numerical parity of logits and taps, and checkpoint errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip('torch')

from kamal_jax import porting  # noqa: E402
from kamal_jax.porting import CheckpointFormatError, PortingError  # noqa: E402
from kamal_jax import torch_models  # noqa: E402

NUM_CLASSES = 7


def _randomise(model, seed=0):
    """Random conv/BN/fc weights, then train-mode passes so BN running stats are non-trivial."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
        model.train()
        for _ in range(3):
            model(torch.randn(4, 3, 32, 32, generator=gen))
    model.eval()
    return model


def _save(model, tmp_path, name='teacher.pth'):
    path = str(tmp_path / name)
    torch.save(model.state_dict(), path)
    return path


def _check_parity(module, variables, torch_forward, resolutions, seed=1):
    gen = torch.Generator().manual_seed(seed)
    for res in resolutions:
        x = torch.randn(2, 3, res, res, generator=gen)
        with torch.no_grad():
            logits_t, taps_t = torch_forward(x)
        logits_j, taps_j = module.apply(variables, x.numpy().transpose(0, 2, 3, 1), train=False)
        diff = np.abs(logits_t.numpy() - np.asarray(logits_j)).max()
        rel = diff / max(np.abs(logits_t.numpy()).max(), 1e-12)  # deep nets' logits reach ~10
        assert rel <= 1e-4, f'{res}px logits differ by {diff} (relative {rel})'
        assert sorted(taps_t) == sorted(taps_j)
        for name, ref in taps_t.items():
            ref = ref.numpy().transpose(0, 2, 3, 1)
            got = np.asarray(taps_j[name])
            assert got.shape == ref.shape, (name, got.shape, ref.shape)
            rel = np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-12)
            assert rel <= 1e-4, f'{res}px tap {name}: relative error {rel}'


@pytest.mark.parametrize('arch,resolutions', [
    ('resnet18', (32, 48)),
    ('resnet50', (32, 40)),
    ('resnet18_small', (32, 48)),
    ('cifar_resnet20', (32, 48)),
    ('cifar_resnet56', (32, 40)),
])
def test_port_matches_pytorch(arch, resolutions, tmp_path):
    torch.manual_seed(0)
    model = _randomise(torch_models.build(arch, NUM_CLASSES))
    module, variables = porting.port_file(arch, _save(model, tmp_path))
    assert module.num_classes == NUM_CLASSES
    _check_parity(module, variables, model.forward_features, resolutions)
    assert porting.inspect(porting.load_state_dict(_save(model, tmp_path))).matches[0].arch == arch


def test_port_custom_widths(tmp_path):
    widths = (8, 8, 16, 24)
    model = _randomise(torch_models.build('cifar_resnet8', NUM_CLASSES, widths))
    module, variables = porting.port_file('cifar_resnet8', _save(model, tmp_path), widths=widths)
    _check_parity(module, variables, model.forward_features, (32,))


@pytest.mark.parametrize('arch', ['resnet18', 'resnet34', 'resnet50', 'resnet18_small', 'resnet50_small'])
def test_port_real_torchvision_resnet(arch, tmp_path):
    pytest.importorskip('torchvision')
    torch.manual_seed(0)
    model = _randomise(torch_models.torchvision_resnet(arch, NUM_CLASSES))
    module, variables = porting.port_file(arch, _save(model, tmp_path))
    assert porting.inspect(porting.load_state_dict(_save(model, tmp_path))).matches[0].arch == arch
    _check_parity(module, variables, lambda x: torch_models.torchvision_features(model, x),
                  (32, 48))


def test_torchvision_features_match_twin():
    """The twin and a real torchvision ResNet share names, so they load each other's weights."""
    pytest.importorskip('torchvision')
    tv = _randomise(torch_models.torchvision_resnet('resnet18', NUM_CLASSES))
    twin = torch_models.build('resnet18', NUM_CLASSES)
    twin.load_state_dict(tv.state_dict())
    twin.eval()
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        logits_a, taps_a = twin.forward_features(x)
        logits_b, taps_b = torch_models.torchvision_features(tv, x)
        assert torch.allclose(logits_a, tv(x), atol=1e-5)
    assert torch.allclose(logits_a, logits_b, atol=1e-5)
    for name in taps_a:
        assert torch.allclose(taps_a[name], taps_b[name], atol=1e-5)


def test_port_safetensors(tmp_path):
    safetensors_torch = pytest.importorskip('safetensors.torch')
    model = _randomise(torch_models.build('cifar_resnet8', NUM_CLASSES))
    path = str(tmp_path / 'teacher.safetensors')
    safetensors_torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    module, variables = porting.port_file('cifar_resnet8', path)
    _check_parity(module, variables, model.forward_features, (32,))


def _state_dict():
    return {k: v.clone() for k, v in torch_models.build('cifar_resnet8', NUM_CLASSES)
            .state_dict().items()}


def test_missing_key_is_named(tmp_path):
    sd = _state_dict()
    del sd['layer2.0.bn1.running_var']
    torch.save(sd, str(tmp_path / 'm.pth'))
    with pytest.raises(PortingError, match=r'missing.*backbone/layer2_0/bn1/var'):
        porting.port_file('cifar_resnet8', str(tmp_path / 'm.pth'))


def test_extra_key_is_named(tmp_path):
    sd = _state_dict()
    sd['layer9.0.conv1.weight'] = torch.zeros(3, 3, 3, 3)
    torch.save(sd, str(tmp_path / 'e.pth'))
    with pytest.raises(PortingError, match=r'unexpected.*layer9\.0\.conv1\.weight'):
        porting.port_file('cifar_resnet8', str(tmp_path / 'e.pth'))


def test_wrong_shape_is_named(tmp_path):
    sd = _state_dict()
    sd['layer1.0.conv2.weight'] = torch.zeros(16, 16, 5, 5)
    torch.save(sd, str(tmp_path / 's.pth'))
    with pytest.raises(PortingError, match=r'mis-shaped.*layer1\.0\.conv2\.weight'):
        porting.port_file('cifar_resnet8', str(tmp_path / 's.pth'))


def test_wrong_arch_reports_every_key(tmp_path):
    """A resnet18 checkpoint loaded as cifar_resnet20 fails, naming the offending keys."""
    path = _save(torch_models.build('resnet18', NUM_CLASSES), tmp_path)
    with pytest.raises(PortingError, match=r'layer4\.0\.conv1\.weight'):
        porting.port_file('cifar_resnet20', path)


def test_unknown_arch_lists_supported(tmp_path):
    path = _save(torch_models.build('cifar_resnet8', NUM_CLASSES), tmp_path)
    with pytest.raises(ValueError, match=r'vgg11.*supported:.*cifar_resnet20.*resnet18'):
        porting.port_file('vgg11', path)
    with pytest.raises(ValueError, match=r'supported:.*resnet50'):
        torch_models.build('vgg11', NUM_CLASSES)


def test_pickled_model_is_refused(tmp_path):
    path = str(tmp_path / 'whole.pth')
    torch.save(torch_models.build('cifar_resnet8', NUM_CLASSES), path)
    with pytest.raises(CheckpointFormatError, match=r'torch\.save\(model\.state_dict\(\)'):
        porting.port_file('cifar_resnet8', path)


def test_wrapped_and_data_parallel_state_dict(tmp_path):
    model = _randomise(torch_models.build('cifar_resnet8', NUM_CLASSES))
    sd = {f'module.{k}': v for k, v in model.state_dict().items()}
    torch.save({'state_dict': sd, 'epoch': 3}, str(tmp_path / 'w.pth'))
    module, variables = porting.port_file('cifar_resnet8', str(tmp_path / 'w.pth'))
    _check_parity(module, variables, model.forward_features, (32,))


def test_porting_cli(tmp_path):
    model = _randomise(torch_models.build('cifar_resnet8', NUM_CLASSES, (8, 8, 16, 16)))
    ckpt = _save(model, tmp_path)
    out = tmp_path / 'ported'
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get('PYTHONPATH', ''))
    proc = subprocess.run(
        [sys.executable, '-m', 'kamal_jax.porting', '--arch', 'cifar_resnet8', '--checkpoint', ckpt,
         '--out', str(out), '--resolution', '24', '--widths', '8,8,16,16'],
        capture_output=True, text=True, env=env, cwd=root, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'parity' in proc.stdout
    meta = json.loads((out / 'teacher.json').read_text())
    assert meta['arch'] == 'cifar_resnet8' and meta['num_classes'] == NUM_CLASSES
    assert meta['widths'] == [8, 8, 16, 16]
    assert len(meta['checkpoint_sha256']) == 64
    assert meta['parity']['logits_max_abs_diff'] <= 1e-4

    from flax import serialization
    import jax
    restored = serialization.msgpack_restore((out / 'variables.msgpack').read_bytes())
    module, variables = porting.port_file('cifar_resnet8', ckpt, widths=(8, 8, 16, 16))
    ref = jax.tree.map(np.asarray, variables)
    assert jax.tree.structure(restored) == jax.tree.structure(ref)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(ref)):
        np.testing.assert_array_equal(a, b)


def test_porting_cli_refuses_pickled_model(tmp_path):
    path = str(tmp_path / 'whole.pth')
    torch.save(torch_models.build('cifar_resnet8', NUM_CLASSES), path)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get('PYTHONPATH', ''))
    proc = subprocess.run(
        [sys.executable, '-m', 'kamal_jax.porting', '--arch', 'cifar_resnet8', '--checkpoint', path,
         '--out', str(tmp_path / 'ported')],
        capture_output=True, text=True, env=env, cwd=root, timeout=300)
    assert proc.returncode == 1
    assert 'state_dict()' in proc.stderr and 'Traceback' not in proc.stderr
    assert not (tmp_path / 'ported' / 'variables.msgpack').exists()
