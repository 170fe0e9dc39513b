"""Default feature taps of an exported graph: the last activation at each spatial resolution.

Read from the node shapes alone (no torch): a 4-D activation whose first dimension is the
batch is a feature map, NCHW (convnets) or NHWC (Swin) as its spatial sizes fit the input
size, and it counts only if no earlier feature map was smaller (a classifier only downsamples:
Swin's window padding and ViT's attention matrices are not feature maps; 1x1 maps, such as a
squeeze-and-excitation's, do not count as smaller); each resolution's last such node in graph
order is a tap, named by its module path.
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


def default_taps(nodes, inputs, size: tuple[int, int]) -> list[dict]:
    """[{name, node, layout, channels, stride}] from the input side to the output side."""
    user = next(i['node'] for i in inputs if i['kind'] == 'input')
    batch = next(n['shape'][0] for n in nodes if n['name'] == user)
    last, smallest = {}, size  # resolution -> (position, node, layout); the smallest so far
    for pos, node in enumerate(nodes):
        if node['op'] != 'call_function' or not str(node.get('dtype', '')).startswith(('float', 'bfloat')):
            continue
        kind = layout(node.get('shape', ()), batch, size)
        if kind is None:
            continue
        hw = tuple(node['shape'][2:4] if kind == 'NCHW' else node['shape'][1:3])
        if hw[0] > smallest[0] or hw[1] > smallest[1]:
            continue
        last[hw] = (pos, node, kind)
        if hw != (1, 1):  # a squeeze-and-excitation 1x1 map does not end the larger resolutions
            smallest = hw
    taps, used = [], set()
    for hw, (_, node, kind) in sorted(last.items(), key=lambda kv: kv[1][0]):
        name = node['module'] or node['name']
        if name in used:
            name = f'{name}:{node["name"]}'
        used.add(name)
        channels = node['shape'][1] if kind == 'NCHW' else node['shape'][3]
        taps.append({'name': name, 'node': node['name'], 'layout': kind, 'channels': int(channels),
                     'stride': max(1, round(size[0] / hw[0]))})
    return taps
