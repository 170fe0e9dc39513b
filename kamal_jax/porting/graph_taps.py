"""Default feature taps of an exported graph: the last activation at each spatial resolution.

Read from the node shapes alone (no torch): a 4-D activation whose first dimension is the
batch is a feature map, NCHW (convnets) or NHWC (Swin) as its spatial sizes fit the input
size, and it counts only if no earlier feature map was smaller (a classifier only downsamples:
Swin's window padding and ViT's attention matrices are not feature maps; 1x1 maps, such as a
squeeze-and-excitation's, do not count as smaller); each resolution's last such node in graph
order is a tap, named by its module path. A ViT's tokens [batch, 1 + h*w, C] are a map of the
grid its patch embedding made (leading class/distillation tokens dropped): its last encoder
output is the tap at that resolution.
"""

from __future__ import annotations


def _fits(size: int, extent) -> bool:
    """`extent` is `size` downsampled by some integer stride (floor or ceil)."""
    if not isinstance(extent, int) or extent < 1 or extent > size:
        return False
    stride = max(1, round(size / extent))
    return extent in (size // stride, -(-size // stride))


def layout(shape, batch: str, size: tuple[int, int]) -> str | None:
    """'NCHW' or 'NHWC' if `shape` is a feature map of the batch at a resolution of `size`."""
    if len(shape) != 4 or shape[0] != batch:
        return None
    _, a, b, c = shape
    h, w = size
    if _fits(h, b) and _fits(w, c) and round(h / b) == round(w / c):
        return 'NCHW'
    if _fits(h, a) and _fits(w, b) and round(h / a) == round(w / b) and isinstance(c, int):
        return 'NHWC'
    return None


def _tokens(shape, batch: str, grid: tuple[int, int]) -> int | None:
    """How many leading tokens (class, distillation) precede a [batch, tokens, C] map of `grid`."""
    if len(shape) != 3 or shape[0] != batch or not all(isinstance(d, int) for d in shape[1:]):
        return None
    extra = shape[1] - grid[0] * grid[1]
    return extra if 0 <= extra <= 2 else None


def to_nhwc(value, tap: dict):
    """A tap's value as the graph computes it -> NHWC (numpy or JAX arrays alike)."""
    if tap['layout'] == 'NCHW':
        return value.transpose(0, 2, 3, 1)
    if tap['layout'] == 'tokens':
        return value[:, tap['skip']:].reshape(value.shape[0], *tap['grid'], value.shape[-1])
    return value


_COPIES = ('aten.slice.Tensor', 'aten.clone.default', 'aten.alias.default', 'aten.view.default')


def _same_value(node, shapes) -> bool:
    """A full slice, clone or same-shape view of its input: the activation it copies keeps the name."""
    first = (node.get('args') or [None])[0]
    return (node.get('target') in _COPIES and isinstance(first, dict) and 'node' in first
            and shapes.get(first['node']) == node.get('shape'))


def _classify(node, batch, size, smallest):
    """(layout, resolution, leading tokens) of a feature map node, or None."""
    shape = node.get('shape', ())
    kind = layout(shape, batch, size)
    if kind is not None:
        return kind, tuple(shape[2:4] if kind == 'NCHW' else shape[1:3]), 0
    skip = _tokens(shape, batch, smallest) if smallest != size else None
    return None if skip is None else ('tokens', smallest, skip)


def default_taps(nodes, inputs, size: tuple[int, int]) -> list[dict]:
    """[{name, node, layout, channels, stride, grid, skip}] from the input side to the output side."""
    user = next(i['node'] for i in inputs if i['kind'] == 'input')
    batch = next(n['shape'][0] for n in nodes if n['name'] == user)
    last, smallest = {}, size  # resolution -> (position, node, layout, skip); the smallest so far
    shapes = {n['name']: n.get('shape') for n in nodes}
    for pos, node in enumerate(nodes):
        if node['op'] != 'call_function' or not str(node.get('dtype', '')).startswith(('float', 'bfloat')):
            continue
        if _same_value(node, shapes):
            continue
        found = _classify(node, batch, size, smallest)
        if found is None or found[1][0] > smallest[0] or found[1][1] > smallest[1]:
            continue
        kind, hw, skip = found
        last[hw] = (pos, node, kind, skip)
        if hw != (1, 1):  # a squeeze-and-excitation 1x1 map does not end the larger resolutions
            smallest = hw
    taps, used = [], set()
    for hw, (_, node, kind, skip) in sorted(last.items(), key=lambda kv: kv[1][0]):
        name = node['module'] or node['name']
        if name in used:
            name = f'{name}:{node["name"]}'
        used.add(name)
        channels = node['shape'][1] if kind == 'NCHW' else node['shape'][-1]
        taps.append({'name': name, 'node': node['name'], 'layout': kind, 'channels': int(channels),
                     'stride': max(1, round(size[0] / hw[0])), 'grid': list(hw), 'skip': skip})
    return taps
