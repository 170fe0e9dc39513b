"""timm teachers: ResNet-18/50 (torchvision's names) and ViT/DeiT (`blocks.N.attn.qkv`, ...).

Models are built with `pretrained=False` (random weights, nothing downloaded), given non-trivial
norm parameters, saved, ported, and compared with timm's own forward: logits and every tap to a
max relative error (max |diff| / max |ref|) of 1e-4. A ViT's head count is not in its weights:
it comes from the architecture name, given directly or through a timm `pretrained_cfg`.
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip('torch')
timm = pytest.importorskip('timm')

import jax  # noqa: E402

from kamal_jax import porting  # noqa: E402
from kamal_jax.tasks import TeacherSpec  # noqa: E402
from kamal_jax.teachers import load_teacher  # noqa: E402

TOL = 1e-4


def _rel(got, ref):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-12))


def _check(module, variables, logits_ref, taps_ref, x):
    """taps_ref: name -> NHWC array; returns every relative error."""
    logits, taps = jax.jit(lambda v, x: module.apply(v, x, train=False))(
        variables, x.permute(0, 2, 3, 1).numpy())
    assert np.abs(logits_ref).max() > 0.1
    errors = {'logits': _rel(logits, logits_ref)}
    assert sorted(taps) == sorted(taps_ref) == sorted(t.name for t in module.backbone.taps())
    for name, ref in taps_ref.items():
        assert np.shape(taps[name]) == ref.shape, name
        errors[name] = _rel(taps[name], ref)
    print(f'max relative error: {max(errors.values()):.2e}')
    assert max(errors.values()) <= TOL, errors
    return errors


def _randomise_norms(model, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.LayerNorm)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)


# ----------------------------------------------------------------------------- ResNet

def _resnet_reference(model, x):
    """timm ResNet logits, and the stem BN / each stage's pre-ReLU sum (hooks; inplace ReLUs)."""
    taps, hooks = {}, []
    hooks.append(model.bn1.register_forward_hook(
        lambda m, i, o: taps.__setitem__('stem', o.clone())))
    for s in range(1, 5):
        last = getattr(model, f'layer{s}')[-1]
        act = last.act3 if hasattr(last, 'act3') else last.act2
        hooks.append(act.register_forward_pre_hook(
            lambda m, i, s=s: taps.__setitem__(f'stage{s}', i[0].clone())))
    with torch.no_grad():
        logits = model(x).numpy()
    for h in hooks:
        h.remove()
    return logits, {k: v.permute(0, 2, 3, 1).numpy() for k, v in taps.items()}


@pytest.mark.parametrize('name', ['resnet18', 'resnet50'])
def test_timm_resnet_parity(name, tmp_path):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=7)
    _randomise_norms(model, 1)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, 3, 64, 64))
    model.eval()
    path = str(tmp_path / f'{name}.pth')
    torch.save(model.state_dict(), path)
    state = porting.load_state_dict(path)
    found = porting.inspect(state)
    assert [a.arch for a in found.matches] == [name]
    assert found.matches[0].num_classes == 7 and found.matches[0].family == 'resnet'
    module, variables = porting.port('auto', state)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    _check(module, variables, *_resnet_reference(model, x), x)


# ----------------------------------------------------------------------------- ViT / DeiT

def _vit_reference(model, x):
    """timm's forward, unrolled to collect patch tokens after the tapped blocks (NHWC)."""
    n = len(model.blocks)
    tapped = sorted({max(1, round(n * q / 4)) for q in range(1, 5)})
    p = model.patch_embed.proj.kernel_size[0]
    gh, gw = x.shape[2] // p, x.shape[3] // p
    taps = {}
    with torch.no_grad():
        h = model._pos_embed(model.patch_embed(x))
        for i, blk in enumerate(model.blocks):
            h = blk(h)
            if i + 1 in tapped:
                taps[f'layer{i + 1}'] = h[:, 1:].reshape(x.shape[0], gh, gw, -1).numpy()
        logits = model(x).numpy()
        np.testing.assert_allclose(model.head(model.norm(h)[:, 0]).numpy(), logits, atol=1e-5)
    return logits, taps


def _random_vit(name, seed, head_std, **kwargs):
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **kwargs)
    _randomise_norms(model, seed)
    with torch.no_grad():  # away from timm's init (near-zero tokens and biases)
        for key, p in model.named_parameters():
            if key in ('cls_token', 'pos_embed') or key.endswith('bias'):
                p.normal_(0, 0.1)
        model.head.weight.normal_(0, head_std)
    return model.eval()


def test_timm_vit_small_parity_heads_from_name(tmp_path):
    """A small-configured vit_small (patch 4, 32 px, 4 blocks): 6 heads, from the name only."""
    model = _random_vit('vit_small_patch16_224', 1, 0.2, num_classes=5, img_size=32, patch_size=4,
                        depth=4)
    path = str(tmp_path / 'vit.pth')
    torch.save({'model': model.state_dict()}, path)
    state = porting.load_state_dict(path)
    arch = porting.resolve('vit_small_patch16_224', state)
    assert dict(arch.options) == dict(image_size=32, patch_size=4, num_layers=4, num_heads=6,
                                      hidden_dim=384, mlp_dim=1536)
    module, variables = porting.port('vit_small_patch16_224', state)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    _check(module, variables, *_vit_reference(model, x), x)
    # Without a name, inspect assumes the standard head count for the width, and says so.
    found = porting.inspect(state)
    assert [a.arch for a in found.matches] == ['vit_small_patch4_32']
    assert dict(found.matches[0].options)['num_heads'] == 6 and 'assumed' in found.matches[0].notes[0]


@pytest.fixture(scope='module')
def deit(tmp_path_factory):
    """A full-size deit_tiny_patch16_224 as the hub keeps one: safetensors + timm config.json."""
    from safetensors.torch import save_file
    model = _random_vit('deit_tiny_patch16_224', 4, 0.05, num_classes=7)
    folder = tmp_path_factory.mktemp('deit')
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(folder / 'model.safetensors'))
    cfg = {'architecture': 'deit_tiny_patch16_224', 'num_classes': 7,
           'pretrained_cfg': dict(model.pretrained_cfg)}
    (folder / 'config.json').write_text(json.dumps(cfg))
    return model, str(folder / 'model.safetensors')


def test_timm_deit_parity_with_pretrained_cfg(deit, tmp_path):
    model, path = deit
    cfg = porting.pretrained_cfg.beside(path)
    assert cfg.architecture == 'deit_tiny_patch16_224' and cfg.input_size == (224, 224)
    state = porting.load_state_dict(path)
    found = porting.inspect(state, cfg.architecture)
    assert [a.arch for a in found.matches] == ['deit_tiny_patch16_224'] and not found.matches[0].notes
    module, variables = porting.port('auto', state, hint=cfg.architecture)
    assert module.backbone.num_heads == 3 and module.backbone.image_size == 224
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    _check(module, variables, *_vit_reference(model, x), x)

    # As a teacher entry with arch='auto': name, mean/std and input size from config.json.
    spec = TeacherSpec(name='deit', arch='auto', checkpoint=path, heads={'t': (0, 7)})
    net, _ = load_teacher(spec, str(tmp_path / 'teachers'), (32, 32))
    assert net.arch == 'deit_tiny_patch16_224' and net.module.backbone.num_heads == 3
    assert net.mean == pytest.approx((0.485, 0.456, 0.406)) and net.input_size == (224, 224)


def test_inspect_cli_reads_the_pretrained_cfg(deit, tmp_path, capsys):
    from kamal_jax.porting.__main__ import main
    _, path = deit
    assert main(['inspect', path]) == 0
    out = capsys.readouterr().out
    assert 'pretrained_cfg' in out and 'architecture deit_tiny_patch16_224' in out
    assert ('deit_tiny_patch16_224: vit, depth 12, 12 layers, width 192, 3 heads, patch 16, 224 px, '
            '7 classes' in out)
    # A pretrained_cfg naming a model of another width is not believed (and the output says so).
    other = tmp_path / 'cfg.json'
    other.write_text(json.dumps({'architecture': 'vit_small_patch16_224', 'mean': [0.5] * 3,
                                 'std': [0.5] * 3, 'input_size': [3, 224, 224]}))
    assert main(['inspect', path, '--pretrained-cfg', str(other)]) == 0
    out = capsys.readouterr().out
    assert 'vit_tiny_patch16_224: vit' in out and '3 heads' in out
    assert 'vit_small_patch16_224 is 384 wide, the weights 192: name ignored' in out
    with pytest.raises(porting.PortingError, match=r'mis-shaped.*blocks\.0\.attn\.qkv\.weight'):
        porting.port('vit_small_patch16_224', porting.load_state_dict(path))
