"""An exported PyTorch teacher (see `torch_export`) run in JAX by interpreting its ATen graph.

`load(path)` reads the graph file (safetensors: tensors plus the graph as JSON in the header;
nothing in it is executed) and checks every op against `aten.TABLE`, so an unsupported op stops
before any training with the op and its module path. `GraphModule` is a pure function of
`(variables, images)` shaped like the Flax teachers: `apply(variables, x, train=False)` returns
`(logits, taps)` with NHWC taps, and `backbone.taps()` declares them; `jax.jit` traces it once.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kamal_jax.models.taps import Tap
from kamal_jax.porting import aten, graph_taps

FORMAT = 'kamal_jax.aten_graph/1'
PROBE = 'probe/'


class UnsupportedOp(ValueError):
    """The graph uses an ATen op the table lacks."""


@dataclasses.dataclass(frozen=True)
class Step:
    name: str
    fn: Any
    args: Any
    kwargs: Any


@dataclasses.dataclass(frozen=True, eq=False)
class Graph:
    """The interpretable form: placeholders, steps in order, output node, taps."""
    inputs: tuple[tuple[str, str, str], ...]  # (node, kind, weight name)
    steps: tuple[Step, ...]
    output: str
    taps: tuple[dict, ...]
    num_classes: int
    input_size: tuple[int, int]
    ops: tuple[str, ...]


def _ref(a):
    """JSON argument -> the same structure with ('node', name) markers and JAX dtypes."""
    if isinstance(a, list):
        return [_ref(x) for x in a]
    if isinstance(a, dict):
        if set(a) == {'node'}:
            return ('node', a['node'])
        if set(a) == {'dtype'}:
            return a['dtype']  # the table maps dtype names itself
        return {k: _ref(v) for k, v in a.items()}
    return a


def parse(graph: dict) -> Graph:
    """Checks the format and every op; raises UnsupportedOp naming the op and its module path."""
    if graph.get('format') != FORMAT:
        raise ValueError(f'not a kamal_jax ATen graph (format {graph.get("format")!r}, expected {FORMAT!r}).')
    steps = []
    for node in graph['nodes']:
        if node['op'] != 'call_function':
            continue
        fn = aten.TABLE.get(node['target'])
        if fn is None:
            where = node['module'] or '(the top-level module)'
            raise UnsupportedOp(f'op {node["target"]} (node {node["name"]}, module {where}) is not in '
                                f'the ATen table (kamal_jax/porting/aten.py).')
        steps.append(Step(node['name'], fn, _ref(node['args']), _ref(node['kwargs'])))
    inputs = tuple((i['node'], i['kind'], i['target'] or '') for i in graph['inputs'])
    ops = tuple(sorted({n['target'] for n in graph['nodes'] if n['op'] == 'call_function'}))
    return Graph(inputs, tuple(steps), graph['output'], tuple(graph['taps']), int(graph['num_classes']),
                 tuple(graph['input_size']), ops)


def _load(env, a):
    if isinstance(a, tuple) and len(a) == 2 and a[0] == 'node':
        return env[a[1]]
    if isinstance(a, list):
        return [_load(env, x) for x in a]
    if isinstance(a, dict):
        return {k: _load(env, v) for k, v in a.items()}
    return a


def run(graph: Graph, weights: dict, x_nchw, taps=None) -> tuple[Any, dict]:
    """(logits, {tap name: value as the graph has it}) of the graph on NCHW input."""
    env = {}
    for node, kind, target in graph.inputs:
        env[node] = x_nchw if kind == 'input' else weights[target]
    for step in graph.steps:
        env[step.name] = step.fn(*_load(env, step.args), **_load(env, step.kwargs))
    taps = graph.taps if taps is None else taps
    return env[graph.output], {t['name']: env[t['node']] for t in taps}


@dataclasses.dataclass(frozen=True, eq=False)
class GraphModule:
    """A frozen teacher as an interpreted ATen graph, shaped like the Flax `Classifier`s."""
    graph: Graph
    dtype: Any = None  # compute dtype (None: float32); weights are cast to it in the step

    @property
    def num_classes(self) -> int:
        return self.graph.num_classes

    @property
    def backbone(self) -> 'GraphModule':
        return self

    def taps(self) -> tuple[Tap, ...]:
        return tuple(Tap(t['name'], int(t['channels']), int(t['stride'])) for t in self.graph.taps)

    def clone(self, **updates) -> 'GraphModule':
        return dataclasses.replace(self, **updates)

    def apply(self, variables, images, train: bool = False, mutable=False):
        """(logits, NHWC taps) of NHWC `images`; frozen, so `train` and `mutable` change nothing."""
        dtype = self.dtype or jnp.float32
        weights = {k: (v.astype(dtype) if jnp.issubdtype(v.dtype, jnp.floating) else v)
                   for c in variables.values() for k, v in c.items()}
        logits, taps = run(self.graph, weights, jnp.transpose(images.astype(dtype), (0, 3, 1, 2)))
        feats = {t['name']: graph_taps.to_nhwc(taps[t['name']], t) for t in self.graph.taps}
        out = (logits, feats)
        return (out, {}) if mutable else out


def read(path: str) -> tuple[dict, dict]:
    """(graph JSON data, tensors) of a graph file; safetensors and JSON only, nothing executed."""
    from safetensors import safe_open
    from safetensors.numpy import load_file
    with safe_open(path, framework='np') as f:
        meta = f.metadata() or {}
    if 'kamal_jax.graph' not in meta:
        raise ValueError(f'{path!r} holds no exported graph (no kamal_jax.graph in its header).')
    return json.loads(meta['kamal_jax.graph']), dict(load_file(path))


def load(path: str):
    """(GraphModule, variables, probe) from a graph file; variables as `apply` takes them."""
    data, tensors = read(path)
    module = GraphModule(parse(data))
    kinds = {target: kind for _, kind, target in module.graph.inputs}
    variables = {'params': {}, 'constants': {}}
    for name, value in tensors.items():
        if not name.startswith(PROBE):
            variables['params' if kinds.get(name) == 'param' else 'constants'][name] = jnp.asarray(value)
    probe = {k[len(PROBE):]: v for k, v in tensors.items() if k.startswith(PROBE)}
    return module, variables, probe


def parity(module: GraphModule, variables, probe: dict) -> dict:
    """Max relative error (max |diff| / max |reference|) of logits and each tap vs. PyTorch's."""
    logits, feats = jax.jit(module.apply)(variables, jnp.asarray(probe['input']))
    rel = lambda a, ref: float(np.abs(np.asarray(a, np.float64) - ref).max()  # noqa: E731
                               / max(float(np.abs(ref).max()), 1e-12))
    return {'logits': rel(logits, probe['logits']),
            'taps': {k: rel(v, probe[f'tap/{k}']) for k, v in feats.items()}}
