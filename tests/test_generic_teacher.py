"""Any PyTorch classifier as a teacher: exported in a PyTorch process, run in JAX from its ATen graph.

Parity is against PyTorch's own outputs on the probe stored in the graph file (logits from the
model's forward, taps from the decomposed graph run by PyTorch's kernels).
"""
import concurrent.futures
import dataclasses
import json
import os

import jax
import numpy as np
import pytest

torch = pytest.importorskip('torch')
torchvision = pytest.importorskip('torchvision')
from torch import nn  # noqa: E402

import toy  # noqa: E402
from kamal_jax import pipeline  # noqa: E402
from kamal_jax.porting import generic, graph, graph_taps  # noqa: E402
from kamal_jax.tasks import ConfigError, TeacherSpec  # noqa: E402
from kamal_jax.teachers import load_teacher  # noqa: E402
from kamal_jax.train import sharding, teacher_cache  # noqa: E402
from kamal_jax.train.trainer import train_student  # noqa: E402

TOL = 1e-4
# torchvision classifier -> (input size, factory kwargs): small inputs where the model allows.
ZOO = {'densenet121': (32, {}), 'efficientnet_b0': (32, {}), 'convnext_tiny': (32, {}),
       'regnet_y_400mf': (32, {}), 'shufflenet_v2_x1_0': (32, {}), 'swin_t': (32, {}),
       'vit_b_16': (32, {'image_size': 32})}


class TinyNet(nn.Module):
    """Ops the torchvision models above do not all cover: grouped conv, ceil-mode max pool,
    avg pool without padding counted, uneven adaptive bins, chunk, hardswish, a LayerNorm."""

    def __init__(self, num_classes=5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Hardswish())
        self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.mix = nn.Conv2d(8, 16, 3, stride=1, padding=1, groups=4)
        self.down = nn.AvgPool2d(3, 2, padding=1, count_include_pad=False)
        self.norm = nn.LayerNorm(16)
        self.fc = nn.Linear(16 * 3 * 3 // 2, num_classes)

    def forward(self, x):
        x = self.pool(self.stem(x))
        a, b = self.mix(x).chunk(2, dim=1)
        x = self.down(torch.cat([torch.relu(a) + 1, nn.functional.gelu(b)], 1))
        x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = nn.functional.adaptive_avg_pool2d(x, 3)[:, ::2]
        return self.fc(x.flatten(1))


def tiny_net(num_classes=5):
    return TinyNet(num_classes)


def _perturbed(model):
    """Random weights, with no all-zero head or identity BatchNorm that would hide an error."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.add_(0.05 * torch.randn(t.shape, generator=gen))
                if name.endswith('running_var'):
                    t.abs_().add_(0.5)
    return model


def _export(tmp, arch, size, kwargs, model):
    pth, out = os.path.join(tmp, 'weights.pth'), os.path.join(tmp, 'teacher.graph.safetensors')
    torch.save(_perturbed(model).state_dict(), pth)
    generic.export(arch, out, pth, (size, size), kwargs)
    return out


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """The zoo's graph files, exported two at a time (each in its own PyTorch process)."""
    jobs = {}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for name, (size, kwargs) in ZOO.items():
            model = torchvision.models.get_model(name, weights=None, num_classes=10, **kwargs)
            jobs[name] = pool.submit(_export, str(tmp_path_factory.mktemp(name)), f'torchvision:{name}',
                                     size, kwargs, model)
        concurrent.futures.wait(list(jobs.values()))
    return jobs  # each test reads its own result (and its own error)


def _check_parity(path, num_classes):
    module, variables, probe = graph.load(path)
    assert module.num_classes == num_classes
    result = graph.parity(module, variables, probe)
    assert result['taps'] and set(result['taps']) == {t.name for t in module.taps()}
    assert result['logits'] <= TOL, result
    assert max(result['taps'].values()) <= TOL, result
    assert np.abs(probe['logits']).max() > 1e-3  # a nonzero reference: the check can fail
    strides = [t.stride for t in module.taps()]
    assert strides == sorted(strides)
    return module, result


@pytest.mark.parametrize('name', list(ZOO))
def test_torchvision_parity(exported, name):
    module, _ = _check_parity(exported[name].result(), num_classes=10)
    strides = [t.stride for t in module.taps()]
    assert strides == sorted(set(strides)) and strides[-1] >= 16
    assert (len(strides) >= 4 and strides[0] <= 4) or name == 'vit_b_16'  # one tap per resolution


def _node(name, shape, module=''):
    return {'op': 'call_function', 'name': name, 'shape': shape, 'dtype': 'float32', 'module': module}


def test_default_taps_last_map_per_resolution():
    """Squeeze-excitation 1x1 maps, attention matrices and window padding are not stages."""
    nodes = [{'op': 'placeholder', 'name': 'x', 'shape': ['s0', 3, 32, 32]},
             _node('a', ['s0', 8, 16, 16], 'stem'), _node('se', ['s0', 8, 1, 1], 'b1.se'),
             _node('b', ['s0', 8, 16, 16], 'b1'), _node('c', ['s0', 16, 8, 8], 'b2'),
             _node('attn', ['s0', 4, 17, 17], 'b3.attn'), _node('w', [1, 16, 8, 8], 'pos'),
             _node('d', ['s0', 4, 4, 32], 'b3'), _node('pad', ['s0', 7, 7, 32], 'b4.pad'),
             _node('e', ['s0', 1, 1, 64], 'b4'), _node('pool', ['s0', 64, 1, 1], 'pool'),
             dict(_node('copy', ['s0', 64, 1, 1]), target='aten.clone.default', args=[{'node': 'pool'}])]
    taps = graph_taps.default_taps(nodes, [{'node': 'x', 'kind': 'input'}], (32, 32))
    assert [(t['name'], t['layout'], t['channels'], t['stride']) for t in taps] == [
        ('b1', 'NCHW', 8, 2), ('b2', 'NCHW', 16, 4), ('b3', 'NHWC', 32, 8), ('pool', 'NCHW', 64, 32)]
    # ViT: the tokens [batch, 1 + h*w, C] after a patch embedding are a map of its grid.
    vit = [nodes[0], _node('proj', ['s0', 32, 4, 4], 'conv_proj'), _node('seq', [5, 's0', 32], 'attn'),
           _node('tok', ['s0', 17, 32], 'encoder.ln'), _node('cls', ['s0', 32], 'heads')]
    taps = graph_taps.default_taps(vit, [{'node': 'x', 'kind': 'input'}], (32, 32))
    assert [(t['name'], t['layout'], t['stride'], t['skip']) for t in taps] == [('encoder.ln', 'tokens', 8, 1)]
    tokens = np.arange(2 * 17 * 3).reshape(2, 17, 3)
    np.testing.assert_array_equal(graph_taps.to_nhwc(tokens, taps[0])[1, 0, 1], tokens[1, 2])


def test_custom_module_parity(tmp_path):
    path = _export(str(tmp_path), f'torch:{__name__}:tiny_net', 14, {'num_classes': 5}, tiny_net())
    module, _ = _check_parity(path, num_classes=5)
    assert [(t.name, t.channels, t.stride) for t in module.taps()] == [
        ('stem.2', 8, 1), ('cat', 16, 2), ('permute_1', 16, 4), ('slice_2', 8, 5)]


# ----------------------------------------------------------------------------- as a teacher

def _tiny_spec(tmp, **kw):
    pth = os.path.join(tmp, 'tiny.pth')
    if not os.path.isfile(pth):
        torch.save(_perturbed(tiny_net(7)).state_dict(), pth)
    fields = dict(name='g_t', arch=f'torch:{__name__}:tiny_net', checkpoint=pth, heads={'a': (0, 5)},
                  mean=toy.MEAN, std=toy.STD, kwargs={'num_classes': 7})
    return TeacherSpec(**{**fields, **kw})


@pytest.fixture(scope='module')
def tiny_teacher(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp('tiny'))
    spec = _tiny_spec(tmp)
    net, variables = load_teacher(spec, os.path.join(tmp, 'teachers'), (12, 12))
    return spec, tmp, net, variables


def _train(stage, frozen, arrays):
    return train_student(name='stage1/a', student=stage.student, loss_fn=stage.loss,
                         bridges=stage.init_bridges(jax.random.key(1)), cfg=toy.stage_config(epochs=2),
                         arrays=arrays, frozen=frozen, mesh=sharding.make_mesh(1), seed=0)


def test_generic_teacher_trains_stage1_cached_like_live(tmp_path, tiny_teacher):
    spec, tmp, net, variables = tiny_teacher
    assert net.module.num_classes == 7 and net.input_size == (12, 12)
    again, again_vars = load_teacher(spec, os.path.join(tmp, 'teachers'), (12, 12))  # read from the cache
    assert [t.name for t in again.taps()] == [t.name for t in net.taps()]
    native, native_vars = toy.teacher('b_t', 'cifar_resnet8', 6, {'a': (1, 6)}, seed=4)
    stage, frozen = toy.stage1([again, native]), {'g_t': again_vars, 'b_t': native_vars}
    assert {p[0].name for p in stage.pairs['a']['g_t']} <= {t.name for t in net.taps()}
    images = toy.images(20)
    expected, m_ref = _train(stage, frozen, {'image': images})
    assert np.isfinite(m_ref['loss']) and m_ref['selected/g_t'] > 0
    cache = teacher_cache.load_or_build(str(tmp_path / 'c'), spec=stage.cache_spec(), frozen=frozen,
                                        images=images, key={'teachers': {'g_t': 'x', 'b_t': 'y'}},
                                        batch_size=8, feature_dtype='float32')
    got, m = _train(dataclasses.replace(stage, cached=True), {}, {'image': images, **cache})
    for x, y in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(m['loss'], m_ref['loss'], rtol=1e-4)
    assert m['selected/g_t'] == pytest.approx(m_ref['selected/g_t'], abs=1e-6)


def test_unsupported_op_stops_naming_op_and_module(tiny_teacher, monkeypatch):
    spec, tmp, _, _ = tiny_teacher
    monkeypatch.delitem(graph.aten.TABLE, 'aten.convolution.default')
    with pytest.raises(ConfigError, match=r'teachers\.g_t .*op aten\.convolution\.default .*module stem\.0\b'):
        load_teacher(spec, os.path.join(tmp, 'teachers'), (12, 12))


def test_factory_that_fails_stops_with_its_error(tmp_path, tiny_teacher):
    spec, tmp, _, _ = tiny_teacher
    bad = _tiny_spec(str(tmp_path), arch='torch:no_such_package.models:net')
    with pytest.raises(ConfigError, match=r"teachers\.g_t .*failed to build: ModuleNotFoundError"):
        load_teacher(bad, str(tmp_path / 'teachers'), (12, 12))
    state = torch.load(spec.checkpoint)
    del state['fc.bias']
    torch.save(state, tmp_path / 'partial.pth')
    partial = dataclasses.replace(spec, checkpoint=str(tmp_path / 'partial.pth'))
    with pytest.raises(ConfigError, match=r'does not load the state_dict strictly.*fc\.bias'):
        load_teacher(partial, str(tmp_path / 'teachers'), (12, 12))
    assert not os.path.exists(tmp_path / 'teachers' / 'g_t.json')
    with pytest.raises(generic.ExportError, match=r'does not load the state_dict strictly.*fc\.bias'):
        generic.check(partial.arch, partial.checkpoint, partial.kwargs)  # validation, before any work
    assert 'loads' in generic.check(spec.arch, spec.checkpoint, spec.kwargs)


def test_config_accepts_factories_and_refuses_malformed_ones():
    config = toy.quickstart_config()
    name = next(iter(config.teachers))
    config.teachers[name].arch = 'torchvision:resnet18'
    pipeline.validate(config, 'runs/x')
    for arch in ('torch:resnet18', 'torchvision:', 'torch:pkg.mod:'):
        config.teachers[name].arch = arch
        with pytest.raises(ConfigError, match=rf'teachers\.{name}\.arch = .* is malformed'):
            pipeline.validate(config, 'runs/x')


def test_cli_prints_parity(tiny_teacher, capsys):
    from kamal_jax.porting.__main__ import main
    spec, tmp, _, _ = tiny_teacher
    out = os.path.join(tmp, 'cli')
    assert main(['--arch', spec.arch, '--checkpoint', spec.checkpoint, '--out', out, '--resolution', '12',
                 '--kwargs', json.dumps(dict(spec.kwargs))]) == 0
    printed = capsys.readouterr().out
    assert 'parity at 12px: logits max relative error' in printed
    card = json.load(open(os.path.join(out, 'teacher.json')))
    assert card['num_classes'] == 7 and card['parity']['logits'] <= TOL


@dataclasses.dataclass
class _Split:
    images: np.ndarray
    labels: dict
    label_names: dict
    name: str = 'fake'
    split: str = 'train'


def _split(n, seed, split):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    images = np.clip(labels[:, None, None, None] * 80 + rng.integers(0, 40, (n, 16, 16, 3)), 0, 255)
    return _Split(images.astype(np.uint8), {'label': labels}, {'label': ['a', 'b', 'c']}, split=split)


def test_zoo_trains_a_factory_that_then_teaches(tmp_path):
    from ml_collections import ConfigDict
    from kamal_jax.zoo import train as zoo_train
    arch = f'torch:{__name__}:tiny_net'
    config = ConfigDict({'zoo': {'data': {'name': 'fake'}, 'teachers': {'g_t': {
        'arch': arch, 'classes': ['c', 'a', 'b'], 'epochs': 1, 'batch_size': 16, 'lr': 0.05,
        'mean': (0.5,) * 3, 'std': (0.25,) * 3}}}})
    card = zoo_train.train_zoo(config, str(tmp_path / 'zoo'), {'train': _split(64, 0, 'train'),
                                                              'eval': _split(32, 1, 'test')})['g_t']
    assert card['arch'] == arch and card['num_classes'] == 3 and card['kwargs'] == {}
    spec = TeacherSpec('g_t', arch, str(tmp_path / 'zoo' / 'g_t.pth'), {'a': (0, 3)}, mean=(0.5,) * 3,
                       std=(0.25,) * 3, kwargs={'num_classes': 3})
    net, variables = load_teacher(spec, str(tmp_path / 'teachers'), (16, 16))
    module, _, probe = graph.load(str(tmp_path / 'teachers' / 'g_t.graph.safetensors'))
    assert graph.parity(module, variables, probe)['logits'] <= TOL
    assert net.module.num_classes == 3


@pytest.mark.parametrize('arch,kwargs,port_as', [
    ('cifar_resnet20_a', {}, 'auto'),
    ('timm:vit_tiny_patch16_224', {'img_size': 32, 'patch_size': 4}, 'vit_tiny_patch4_32')])
def test_zoo_option_a_and_timm_teachers_port_natively(arch, kwargs, port_as):
    """The mixed pool's other members: the zoo builds them, the rule tables port them."""
    pytest.importorskip('timm')
    from kamal_jax import porting
    from kamal_jax.zoo import train as zoo_train
    torch.manual_seed(0)
    model = _perturbed(zoo_train.build_model({'arch': arch, 'kwargs': kwargs, 'widths': None}, 4, 3)).eval()
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    architecture = porting.resolve(port_as, state)
    if port_as == 'auto':
        assert architecture.arch == 'cifar_resnet20' and dict(architecture.options)['shortcut'] == 'zero_pad'
    module, variables = porting.port_architecture(architecture, state, (1, 32, 32, 3))
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    got = np.asarray(module.apply(variables, x, train=False)[0])
    assert np.abs(got - ref).max() / np.abs(ref).max() <= TOL
