"""Parity of ported torchvision MobileNetV2 / VisionTransformer checkpoints (eval mode).

Each torchvision model gets random weights (BN running stats from a few train-mode passes),
its state_dict is saved to a .pth and ported with `port_file`; logits must agree to 1e-4 and
every tap to 1e-4 relative (max |diff| / max |ref|) against the same quantity computed from
the torchvision model's submodules, at two input resolutions.
"""
import numpy as np
import pytest

torch = pytest.importorskip('torch')
torchvision = pytest.importorskip('torchvision')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from torchvision.models.vision_transformer import VisionTransformer, interpolate_embeddings  # noqa: E402

from kamal_jax import models, porting  # noqa: E402
from kamal_jax.porting import PortingError  # noqa: E402

LOGIT_TOL = 1e-4
FEATURE_TOL = 1e-4
TINY_VIT = dict(image_size=32, patch_size=4, num_layers=4, num_heads=2, hidden_dim=64, mlp_dim=128)


def _nhwc(x):
    return jnp.asarray(x.permute(0, 2, 3, 1).numpy())


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)


def _check(module, variables, logits_ref, feats_ref, x):
    logits, feats = jax.jit(module.apply)(variables, _nhwc(x))
    assert np.abs(np.asarray(logits) - logits_ref).max() <= LOGIT_TOL
    taps = module.backbone.taps()
    assert sorted(t.name for t in taps) == sorted(feats) == sorted(feats_ref)
    for tap in taps:
        got, ref = np.asarray(feats[tap.name]), feats_ref[tap.name]
        assert got.shape == ref.shape == (x.shape[0], x.shape[2] // tap.stride,
                                          x.shape[3] // tap.stride, tap.channels), tap
        assert _rel(got, ref) <= FEATURE_TOL, (tap.name, _rel(got, ref))


def _randomise_(model, head, head_std=0.5):
    """Non-trivial affine BN/LN params and head (torchvision initialises them to 1/0/0)."""
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.LayerNorm)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
        head.weight.normal_(0, head_std)
        head.bias.normal_(0, 0.1)


# ----------------------------------------------------------------------------- MobileNetV2

_MOBILENET_TAPS = {1: 'stride2', 3: 'stride4', 6: 'stride8', 13: 'stride16', 18: 'stride32'}


def _mobilenet_reference(model, x):
    feats = {}
    with torch.no_grad():
        h = x
        for i, layer in enumerate(model.features):
            h = layer(h)
            if i in _MOBILENET_TAPS:
                feats[_MOBILENET_TAPS[i]] = h.permute(0, 2, 3, 1).numpy()
        logits = model(x).numpy()
    return logits, feats


@pytest.fixture(scope='module')
def mobilenet(tmp_path_factory):
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(num_classes=7)
    _randomise_(model, model.classifier[1], head_std=0.1)
    model.train()
    with torch.no_grad():  # Non-trivial running statistics.
        for _ in range(3):
            model(torch.randn(4, 3, 64, 64) * 2 + 0.5)
    model.eval()
    path = tmp_path_factory.mktemp('mobilenet') / 'mobilenet_v2.pth'
    torch.save(model.state_dict(), path)
    return model, path


@pytest.mark.parametrize('size', [32, 64])
def test_mobilenet_v2_parity(mobilenet, size):
    model, path = mobilenet
    module, variables = porting.port_file('mobilenet_v2', str(path), input_shape=(1, size, size, 3))
    assert [a.arch for a in porting.inspect(porting.load_state_dict(str(path))).matches] == [
        'mobilenet_v2']
    assert set(variables) == {'params', 'batch_stats'}
    torch.manual_seed(size)
    x = torch.randn(2, 3, size, size)
    logits, feats = _mobilenet_reference(model, x)
    assert np.abs(logits).max() > 0.1  # The comparison is not vacuous.
    _check(module, variables, logits, feats, x)


def test_mobilenet_v2_taps_and_registry():
    backbone = models.backbone('mobilenet_v2')
    assert [(t.name, t.channels, t.stride) for t in backbone.taps()] == [
        ('stride2', 16, 2), ('stride4', 24, 4), ('stride8', 32, 8), ('stride16', 96, 16),
        ('stride32', 1280, 32)]
    assert backbone.out_channels == 1280
    with pytest.raises(ValueError, match='widths'):
        models.backbone('mobilenet_v2', widths=(8, 16))


# ----------------------------------------------------------------------------- ViT

def _vit_reference(model, x):
    """torchvision's forward, unrolled to collect patch tokens after tapped layers (NHWC)."""
    layers = list(model.encoder.layers)
    n = len(layers)
    tapped = sorted({max(1, round(n * q / 4)) for q in range(1, 5)})
    gh, gw = x.shape[2] // model.patch_size, x.shape[3] // model.patch_size
    feats = {}
    with torch.no_grad():
        h = model._process_input(x)
        h = torch.cat([model.class_token.expand(x.shape[0], -1, -1), h], dim=1)
        h = h + model.encoder.pos_embedding
        for i, layer in enumerate(layers):
            h = layer(h)
            if i + 1 in tapped:
                feats[f'layer{i + 1}'] = h[:, 1:].reshape(x.shape[0], gh, gw, -1).numpy()
        logits = model(x).numpy()
        pooled = model.encoder.ln(h)[:, 0]
        np.testing.assert_allclose(model.heads(pooled).numpy(), logits, atol=1e-5)
    return logits, feats


def _vit_at(model, config, image_size):
    """The same weights at another resolution, as torchvision resizes them (bicubic)."""
    if image_size == config['image_size']:
        return model
    state = interpolate_embeddings(image_size, config['patch_size'], dict(model.state_dict()))
    other = VisionTransformer(**{**config, 'image_size': image_size},
                              num_classes=model.heads.head.out_features)
    other.load_state_dict(state)
    return other.eval()


def _random_vit(config, num_classes, seed):
    torch.manual_seed(seed)
    model = VisionTransformer(**config, num_classes=num_classes)
    with torch.no_grad():  # Away from torchvision's init (zero class token, tiny biases).
        for name, p in model.named_parameters():
            if name in ('class_token', 'encoder.pos_embedding') or name.endswith('bias'):
                p.normal_(0, 0.1)
    return model


@pytest.fixture(scope='module')
def tiny_vit(tmp_path_factory):
    model = _random_vit(TINY_VIT, 5, seed=1)
    _randomise_(model, model.heads.head)
    model.eval()
    path = tmp_path_factory.mktemp('vit') / 'vit_tiny.pth'
    torch.save(model.state_dict(), path)
    return model, path


@pytest.mark.parametrize('size', [32, 48])
def test_tiny_vit_parity(tiny_vit, size):
    model, path = tiny_vit
    module, variables = porting.port_file('vit_tiny_4', str(path), input_shape=(1, size, size, 3))
    assert [a.arch for a in porting.inspect(porting.load_state_dict(str(path))).matches] == [
        'vit_tiny_4']
    assert set(variables) == {'params'}
    torch.manual_seed(size)
    x = torch.randn(2, 3, size, size)
    logits, feats = _vit_reference(_vit_at(model, TINY_VIT, size), x)
    assert np.abs(logits).max() > 0.1
    _check(module, variables, logits, feats, x)


def test_tiny_vit_taps_and_bad_checkpoint(tiny_vit):
    backbone = models.backbone('vit_tiny_4')
    assert [(t.name, t.channels, t.stride) for t in backbone.taps()] == [
        ('layer1', 64, 4), ('layer2', 64, 4), ('layer3', 64, 4), ('layer4', 64, 4)]
    assert [t.name for t in models.backbone('vit_b_16').taps()] == [
        'layer3', 'layer6', 'layer9', 'layer12']
    _, path = tiny_vit
    state = porting.load_state_dict(str(path))
    del state['encoder.layers.encoder_layer_1.self_attention.in_proj_weight']
    state['encoder.pos_embedding'] = state['encoder.pos_embedding'][:, :10]
    with pytest.raises(PortingError, match=r'2 missing.*encoder_layer_1/self_attention/in_proj/kernel'
                                           r'.*mis-shaped.*encoder\.pos_embedding'):
        porting.port('vit_tiny_4', state)


def test_vit_b_16_key_mapping():
    """Every vit_b_16 / vit_b_32 key maps onto the Flax tree with the right shape (no compute)."""
    for arch, build in (('vit_b_16', torchvision.models.vit_b_16),
                        ('vit_b_32', torchvision.models.vit_b_32)):
        with torch.device('meta'):
            shapes = {k: tuple(v.shape) for k, v in build(num_classes=3).state_dict().items()}
        state = {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}
        module, variables = porting.port(arch, state, input_shape=(1, 224, 224, 3))
        assert [a.arch for a in porting.inspect(state).matches] == [arch]
        n_torch = sum(int(np.prod(s)) for s in shapes.values())
        assert sum(v.size for v in jax.tree.leaves(variables)) == n_torch
        assert variables['params']['fc']['kernel'].shape == (768, 3)


def test_vit_b_16_parity():
    """Full-size vit_b_16 at its native 224 and at 160 (10x10 patch grid); ~10 s on 2 CPUs."""
    config = dict(image_size=224, patch_size=16, num_layers=12, num_heads=12, hidden_dim=768,
                  mlp_dim=3072)
    model = _random_vit(config, 4, seed=2)
    _randomise_(model, model.heads.head, head_std=0.05)
    model.eval()
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    module, variables = porting.port('vit_b_16', state, input_shape=(1, 224, 224, 3))
    for size in (224, 160):
        torch.manual_seed(size)
        x = torch.randn(1, 3, size, size)
        logits, feats = _vit_reference(_vit_at(model, config, size), x)
        assert np.abs(logits).max() > 0.1
        _check(module, variables, logits, feats, x)
