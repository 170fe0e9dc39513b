"""Stage 1 with two teachers of different families (a CIFAR ResNet and torchvision's MobileNetV2),
both ported from PyTorch checkpoints, feeding one component net."""
import jax
import numpy as np
import torch
import torchvision

import toy
from kamal_jax import porting
from kamal_jax.train import sharding
from kamal_jax.train.nets import Net
from kamal_jax.train.trainer import train_student


def _save(model, path):
    torch.save(model.state_dict(), path)
    return str(path)


def test_resnet_and_mobilenet_teach_one_component(tmp_path):
    from kamal_jax import torch_models
    torch.manual_seed(0)
    resnet_ckpt = _save(torch_models.build('cifar_resnet8', 7), tmp_path / 'resnet.pth')
    mobilenet_ckpt = _save(torchvision.models.mobilenet_v2(num_classes=6), tmp_path / 'mobilenet.pth')
    r_module, r_vars = porting.port_file('cifar_resnet8', resnet_ckpt, input_shape=(1, 16, 16, 3))
    m_module, m_vars = porting.port_file('mobilenet_v2', mobilenet_ckpt, input_shape=(1, 32, 32, 3))
    # The MobileNetV2 teacher sees 32 px (it was "trained" there); the data and the student are 16 px.
    resnet = Net('resnet', 'cifar_resnet8', r_module, toy.MEAN, toy.STD, heads={'a': (0, 5)})
    mobilenet = Net('mobilenet', 'mobilenet_v2', m_module, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                    input_size=(32, 32), heads={'a': (1, 6)})
    stage = toy.stage1([resnet, mobilenet])
    assert [t.name for t, _ in stage.pairs['a']['mobilenet']] == ['stride2', 'stride8', 'stride16', 'stride32']
    variables, metrics = train_student(
        name='mixed', student=stage.student, loss_fn=stage.loss,
        bridges=stage.init_bridges(jax.random.key(0)), cfg=toy.stage_config(epochs=3),
        arrays={'image': toy.images(32, size=16)}, frozen={'resnet': r_vars, 'mobilenet': m_vars},
        mesh=sharding.make_mesh(1), seed=0, crop_padding=2, log_every=1)
    assert np.isfinite(metrics['loss'])
    assert metrics['selected/resnet'] + metrics['selected/mobilenet'] == 1.0
    assert variables['params']['head_a']['kernel'].shape == (64, 5)
