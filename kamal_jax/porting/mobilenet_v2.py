"""Rule table for torchvision's MobileNetV2 (`features.*`, `classifier.1` after the Dropout).

Block 1 has no expansion conv, so its `conv.0` is the depthwise conv; the generic leaf rules
handle the depthwise kernel (O1HW -> HW1O) and BatchNorm.
"""

from kamal_jax.porting.architecture import Architecture

RENAMES = (
    (r'^features/0/0$', r'backbone/stem_conv'),
    (r'^features/0/1$', r'backbone/stem_bn'),
    (r'^features/18/0$', r'backbone/last_conv'),
    (r'^features/18/1$', r'backbone/last_bn'),
    (r'^features/1/conv/0/0$', r'backbone/block1/dw_conv'),
    (r'^features/1/conv/0/1$', r'backbone/block1/dw_bn'),
    (r'^features/1/conv/1$', r'backbone/block1/project_conv'),
    (r'^features/1/conv/2$', r'backbone/block1/project_bn'),
    (r'^features/(\d+)/conv/0/0$', r'backbone/block\1/expand_conv'),
    (r'^features/(\d+)/conv/0/1$', r'backbone/block\1/expand_bn'),
    (r'^features/(\d+)/conv/1/0$', r'backbone/block\1/dw_conv'),
    (r'^features/(\d+)/conv/1/1$', r'backbone/block\1/dw_bn'),
    (r'^features/(\d+)/conv/2$', r'backbone/block\1/project_conv'),
    (r'^features/(\d+)/conv/3$', r'backbone/block\1/project_bn'),
    (r'^classifier/1$', r'fc'),
)
HEAD_KEY = 'classifier.1.weight'


def detect(state_dict, hint=None):
    """torchvision's MobileNetV2 at width 1.0 (the only one registered)."""
    del hint
    if 'features.0.0.weight' not in state_dict or HEAD_KEY not in state_dict:
        return []
    return [Architecture('mobilenet_v2', int(state_dict[HEAD_KEY].shape[0]), None, (),
                         'mobilenet_v2', 'mobilenet_v2')]
