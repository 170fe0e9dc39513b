"""Rule table for torchvision-style ResNets (and the project's CIFAR ResNets, which share the names)."""

RENAMES = (
    (r'^layer(\d+)/(\d+)', r'backbone/layer\1_\2'),
    (r'/downsample/0$', r'/downsample_conv'),
    (r'/downsample/1$', r'/downsample_bn'),
    (r'^(conv1|bn1)$', r'backbone/\1'),
)
HEAD_KEY = 'fc.weight'
