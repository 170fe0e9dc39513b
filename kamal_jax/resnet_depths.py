"""How deep ResNets are built: the one table the Flax models (`models.resnet`) and their PyTorch
twins (`torch_models`) both read, so it imports neither Flax nor torch."""

from __future__ import annotations

# torchvision's ResNet-N: blocks per stage and the block kind.
RESNET_DEPTHS = {18: ((2, 2, 2, 2), 'basic'), 34: ((3, 4, 6, 3), 'basic'),
                 50: ((3, 4, 6, 3), 'bottleneck'), 101: ((3, 4, 23, 3), 'bottleneck')}


def cifar_blocks_per_stage(depth: int) -> int:
    """He et al.'s CIFAR ResNet-(6n+2) has n basic blocks in each stage."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f'CIFAR ResNet depth must be 6n+2 (8, 14, 20, 32, 44, 56, 110, ...), '
                         f'got {depth}.')
    return (depth - 2) // 6
