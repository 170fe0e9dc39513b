"""Exports any PyTorch classifier to a portable graph file; runs in its own PyTorch process.

    python -m kamal_jax.porting.torch_export --factory torchvision:resnet18 \
        --state-dict teacher.pth --out teacher.graph.safetensors [--size 32] [--kwargs '{}']

`--factory` is `torchvision:NAME` (built with `weights=None`, its classes read from the
state_dict's last 2-D weight) or `package.module:function` (called with `--kwargs`). The model
is loaded strictly, exported with `torch.export` (dynamic batch dimension) and decomposed to
core ATen ops. The file is safetensors: the tensors the graph reads (parameters, buffers,
constants), a probe (a random input, the model's logits and its taps on it, for parity), and in
the header's metadata the graph as JSON data (op, arguments, shapes, module path per node) and
the default taps. Reading it back (`kamal_jax.porting.graph`) never runs code from it.

The JAX core never imports this module: it runs as `python -m` (PyTorch must load before
TensorFlow in a process, and the JAX side does not depend on PyTorch).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

import numpy as np
import torch

from kamal_jax.porting.graph import FORMAT
from kamal_jax.porting.graph_taps import default_taps, to_nhwc

_KINDS = {'PARAMETER': 'param', 'BUFFER': 'buffer', 'CONSTANT_TENSOR': 'constant',
          'USER_INPUT': 'input'}


class FactoryError(ValueError):
    """The factory cannot be built, or the state_dict does not load into it strictly."""


def _torchvision_classes(state_dict) -> dict:
    weights = [k for k, v in state_dict.items() if k.endswith('weight') and v.ndim == 2]
    return {'num_classes': int(state_dict[weights[-1]].shape[0])} if weights else {}


def build(factory: str, state_dict=None, kwargs=None) -> torch.nn.Module:
    """The model `factory` names, with `state_dict` loaded strictly, in eval mode."""
    kwargs = dict(kwargs or {})
    try:
        if factory.startswith('torchvision:'):
            import torchvision
            if state_dict is not None:
                kwargs = {**_torchvision_classes(state_dict), **kwargs}
            model = torchvision.models.get_model(factory.split(':', 1)[1], weights=None, **kwargs)
        else:
            module_name, _, fn = factory.removeprefix('torch:').partition(':')
            model = getattr(importlib.import_module(module_name), fn)(**kwargs)
    except Exception as e:
        raise FactoryError(f'factory {factory!r} failed to build: {type(e).__name__}: '
                           f'{" ".join(str(e).split())}') from None
    if state_dict is not None:
        try:
            model.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in state_dict.items()},
                                  strict=True)
        except Exception as e:
            raise FactoryError(f'factory {factory!r} does not load the state_dict strictly: '
                               f'{" ".join(str(e).split())}') from None
    return model.eval()


def _shape(val) -> list:
    return [int(d) if isinstance(d, int) or str(d).isdigit() else str(d) for d in val.shape]


def _encode(a):
    """A node argument as JSON data: node references, dtypes and nested lists."""
    if isinstance(a, torch.fx.Node):
        return {'node': a.name}
    if isinstance(a, (list, tuple)):
        return [_encode(x) for x in a]
    if isinstance(a, dict):
        return {str(k): _encode(v) for k, v in a.items()}
    if isinstance(a, torch.dtype):
        return {'dtype': str(a).removeprefix('torch.')}
    if isinstance(a, (torch.device, torch.memory_format, torch.layout)):
        return None
    if a is None or isinstance(a, (bool, int, float, str)):
        return a
    raise TypeError(f'cannot write argument {a!r} ({type(a).__name__}) of the exported graph')


def _target(node) -> str:
    if isinstance(node.target, torch._ops.OpOverload):
        return str(node.target)
    return f'{getattr(node.target, "__module__", "") or ""}.{node.target.__name__}'.lstrip('.')


def _module_path(node) -> str:
    stack = node.meta.get('nn_module_stack') or {}
    return list(stack.values())[-1][0] if stack else ''


def _node(node) -> dict:
    val = node.meta.get('val')
    out = {'name': node.name, 'op': node.op, 'module': _module_path(node)}
    if node.op == 'call_function':
        out.update(target=_target(node), args=_encode(node.args), kwargs=_encode(dict(node.kwargs)))
    if isinstance(val, torch.Tensor):
        out.update(shape=_shape(val), dtype=str(val.dtype).removeprefix('torch.'))
    elif node.op == 'output':
        out['args'] = _encode(node.args)
    return out


def _inputs(ep) -> list[dict]:
    return [{'node': s.arg.name, 'kind': _KINDS.get(s.kind.name, s.kind.name.lower()), 'target': s.target}
            for s in ep.graph_signature.input_specs]


def _tensors(ep, inputs) -> dict[str, np.ndarray]:
    out = {}
    for i in inputs:
        if i['kind'] in ('param', 'buffer', 'constant'):
            t = ep.state_dict.get(i['target'])
            t = ep.constants[i['target']] if t is None else t
            out[i['target']] = t.detach().contiguous().cpu().numpy().copy()
    return out


def run_graph(ep, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every node's value on `x`, computed by PyTorch's own ATen kernels (for the probe)."""
    env, feed = {}, {}
    for i in _inputs(ep):
        feed[i['node']] = x if i['kind'] == 'input' else (
            ep.state_dict.get(i['target']) if i['target'] in ep.state_dict else ep.constants[i['target']])
    load = lambda a: torch.fx.node.map_arg(a, lambda n: env[n.name])  # noqa: E731
    for node in ep.graph.nodes:
        if node.op == 'placeholder':
            env[node.name] = feed[node.name]
        elif node.op == 'call_function':
            env[node.name] = node.target(*load(node.args), **load(node.kwargs))
    return env


def export(model: torch.nn.Module, size=(32, 32), batch: int = 2, seed: int = 0):
    """(graph JSON data, tensors) of `model` on `batch` random NCHW images of `size`."""
    x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ep = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim('batch')},))
        ep = ep.run_decompositions()
        logits = model(x)
        values = run_graph(ep, x)
    nodes = [_node(n) for n in ep.graph.nodes]
    inputs = _inputs(ep)
    outputs = [n for n in nodes if n['op'] == 'output'][0]['args'][0]
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or len(outputs) != 1:
        raise FactoryError(f'the model returns {type(logits).__name__} '
                           f'{getattr(logits, "shape", "")}; a teacher must return one [batch, classes] tensor.')
    taps = default_taps(nodes, inputs, tuple(size))
    tensors = _tensors(ep, inputs)
    tensors['probe/input'] = x.numpy().transpose(0, 2, 3, 1).copy()  # NHWC, as JAX sees images
    tensors['probe/logits'] = logits.numpy().copy()
    for tap in taps:
        ref = values[tap['node']].numpy()
        tensors[f'probe/tap/{tap["name"]}'] = np.ascontiguousarray(to_nhwc(ref, tap))
    graph = {'format': FORMAT, 'nodes': nodes, 'inputs': inputs, 'output': outputs[0]['node'],
             'num_classes': int(logits.shape[1]), 'input_size': list(size), 'taps': taps}
    return graph, tensors


def write(path: str, graph: dict, tensors: dict) -> None:
    from safetensors.numpy import save_file
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path,
              metadata={'kamal_jax.graph': json.dumps(graph)})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='python -m kamal_jax.porting.torch_export', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--factory', required=True, help="'torchvision:NAME' or 'package.module:function'")
    parser.add_argument('--state-dict', default=None, help='weights to load strictly (else random init)')
    parser.add_argument('--out', default=None, help='the graph file to write (.safetensors)')
    parser.add_argument('--size', type=int, nargs='+', default=[32], help='probe input H [W]')
    parser.add_argument('--kwargs', default='{}', help='JSON keyword arguments of the factory')
    parser.add_argument('--ema', action='store_true', help="load the checkpoint's EMA weights")
    parser.add_argument('--check', action='store_true', help='only build and load strictly; write nothing')
    args = parser.parse_args(argv)
    size = tuple(args.size * 2 if len(args.size) == 1 else args.size[:2])
    try:
        state_dict = None
        if args.state_dict:
            from kamal_jax.porting.state_dict import read_checkpoint
            state_dict = read_checkpoint(args.state_dict, args.ema, integers=True).tensors
        model = build(args.factory, state_dict, json.loads(args.kwargs))
    except (FactoryError, ValueError, FileNotFoundError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    if args.check:  # one image through the model: its output width, for the logit slices
        try:
            with torch.no_grad():
                logits = model(torch.zeros(1, 3, *size))
        except Exception as e:
            print(f'error: {args.factory!r} does not run on a {size[0]}x{size[1]} image: {type(e).__name__}: '
                  f'{" ".join(str(e).split())[:300]}', file=sys.stderr)
            return 2
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
            print(f'error: the model returns {type(logits).__name__} {tuple(getattr(logits, "shape", ()))}; a teacher '
                  'must return one [batch, classes] tensor.', file=sys.stderr)
            return 2
        print(f'{args.factory}: builds and loads {args.state_dict or "(random init)"} strictly; '
              f'{int(logits.shape[1])} output logits')
        return 0
    try:
        graph, tensors = export(model, size)
    except FactoryError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    except Exception as e:  # torch.export's own errors: one line naming the factory
        first = (str(e).strip().splitlines() or [''])[0]
        print(f'error: torch.export of {args.factory!r} at {size[0]}x{size[1]} failed: '
              f'{type(e).__name__}: {first}', file=sys.stderr)
        return 2
    write(args.out, graph, tensors)
    ops = sorted({n['target'] for n in graph['nodes'] if n['op'] == 'call_function'})
    print(f'wrote {args.out}: {len(graph["nodes"])} nodes, {len(ops)} ops, '
          f'{graph["num_classes"]} classes, taps {", ".join(t["name"] for t in graph["taps"])}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
