"""Converts one PyTorch teacher checkpoint into Flax variables, or says what a checkpoint is.

    python -m kamal_jax.porting --arch resnet18 --checkpoint teacher.pth --out ported/ \
        [--resolution 32] [--widths 64,64,128,256,512] [--ema] [--pretrained-cfg config.json]
    python -m kamal_jax.porting --arch auto --checkpoint resnet20.th --out ported/
    python -m kamal_jax.porting inspect resnet20.th [--ema] [--pretrained-cfg config.json]
    python -m kamal_jax.porting --arch torchvision:densenet121 --checkpoint teacher.pth --out ported/ \
        [--resolution 32] [--kwargs '{"num_classes": 10}']
    python -m kamal_jax.porting --arch torch:package.module:function --checkpoint teacher.pth --out ported/

Writes `OUT/variables.msgpack` (`flax.serialization.msgpack_serialize` of the numpy variables)
and `OUT/teacher.json` (arch, num_classes, widths, the resolved `architecture` record that
`kamal_jax.porting.Architecture.from_json` reads back, checkpoint sha256, parity, and a timm
pretrained_cfg's mean/std/input size when there is one). `--arch auto` ports as the registered
architecture the weights match. When PyTorch is installed and `kamal_jax.torch_models` can
build the architecture, the ported model is run next to the PyTorch one on random inputs and the
largest differences are printed. A teacher card next to the checkpoint (`teacher.json` for
`teacher.pth`, as the zoo writes them) is copied in, and its widths are used when `--widths` is
not given. A `torch:`/`torchvision:` arch is exported in a PyTorch process to
`OUT/teacher.graph.safetensors` (see `kamal_jax.porting.torch_export`) and run in JAX from its ATen
graph; the parity printed is against PyTorch's outputs stored in that file. `inspect` prints every registered architecture (family, depth, widths, classes,
shortcut kind) the file matches, or the nearest one and its first offending keys (exit status 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

try:  # PyTorch before anything that might pull in TensorFlow (the reverse order aborts).
    import torch
except ImportError:  # .safetensors checkpoints still convert; no parity check.
    torch = None

import numpy as np

from kamal_jax.files import sha256


def _parse_widths(values):
    if not values:
        return None
    widths = [int(w) for v in values for w in v.replace(',', ' ').split()]
    return tuple(widths) or None


def _sibling_card(checkpoint: str):
    path = os.path.splitext(checkpoint)[0] + '.json'
    if os.path.isfile(path):
        with open(path) as f:
            try:
                return json.load(f)
            except json.JSONDecodeError:
                return None
    return None


def parity(architecture, state_dict, module, variables, resolution, seed=0):
    """Max |logit diff| and per-tap relative error vs. the PyTorch twin; None if unavailable."""
    if torch is None:
        return None
    from kamal_jax.porting import resnet as resnet_rules
    from kamal_jax import torch_models
    if architecture.arch not in torch_models.ARCHS or architecture.options:
        return None  # no twin (e.g. option-A shortcuts): the tests check those against PyTorch
    model = torch_models.build(architecture.arch, architecture.num_classes, architecture.widths)
    tensors = {k: torch.from_numpy(np.array(v))
               for k, v in resnet_rules.canonical(state_dict).items()}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if not k.endswith('num_batches_tracked')]
    if missing or unexpected:
        raise RuntimeError(f'PyTorch {architecture.arch} does not load the checkpoint: missing '
                           f'{missing}, unexpected {unexpected}.')
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, resolution, resolution, generator=gen)
    with torch.no_grad():
        logits_t, taps_t = model.forward_features(x)
    logits_j, taps_j = module.apply(variables, x.numpy().transpose(0, 2, 3, 1), train=False)
    taps = {}
    for name, ref in taps_t.items():
        ref = ref.numpy().transpose(0, 2, 3, 1)
        taps[name] = float(np.abs(np.asarray(taps_j[name]) - ref).max()
                           / max(float(np.abs(ref).max()), 1e-12))
    return {'resolution': resolution,
            'logits_max_abs_diff': float(np.abs(logits_t.numpy() - np.asarray(logits_j)).max()),
            'tap_max_rel_error': taps}


def _pretrained_cfg(args):
    from kamal_jax.porting import pretrained_cfg
    if args.pretrained_cfg:
        return pretrained_cfg.read(args.pretrained_cfg)
    return pretrained_cfg.beside(args.checkpoint)


def inspect_main(argv) -> int:
    parser = argparse.ArgumentParser(prog='python -m kamal_jax.porting inspect',
                                     description='Which registered architectures a checkpoint is.')
    parser.add_argument('checkpoint', help='a state_dict file')
    parser.add_argument('--ema', action='store_true', help='read the EMA weights of the checkpoint')
    parser.add_argument('--pretrained-cfg', default=None,
                        help='timm pretrained_cfg / config.json naming the architecture')
    args = parser.parse_args(argv)
    from kamal_jax import porting
    try:
        cfg = _pretrained_cfg(args)
        ckpt = porting.read_checkpoint(args.checkpoint, args.ema)
        found = porting.inspect(ckpt.tensors, cfg.architecture if cfg else None)
    except (FileNotFoundError, ValueError) as e:  # CheckpointFormatError included.
        print(f'error: {e}', file=sys.stderr)
        return 1
    how = [f'{len(ckpt.tensors)} tensors']
    if ckpt.wrappers:
        how.append('under ' + ' > '.join(repr(w) for w in ckpt.wrappers))
    if ckpt.prefixes:
        how.append('prefix ' + ''.join(ckpt.prefixes) + ' removed')
    if ckpt.extras:
        how.append('beside ' + ', '.join(ckpt.extras[:6]))
    print(f'{args.checkpoint}: {"; ".join(how)}')
    if cfg:
        print(f'pretrained_cfg {cfg.source}: architecture {cfg.architecture}, mean {cfg.mean}, '
              f'std {cfg.std}, input size {cfg.input_size}')
    if found.matches:
        print('matches:')
        for a in found.matches:
            print(f'  {a.describe()}')
        return 0
    print(f'no registered architecture matches; nearest: {found.nearest.describe()}')
    print(f'  {found.error.count} offending key{"s" * (found.error.count != 1)}; first:')
    for line in found.error.first(8):
        print(f'    {line}')
    return 1


def generic_main(args) -> int:
    """A torch:/torchvision: teacher: export, run in JAX on the stored probe, print the parity."""
    from kamal_jax.porting import generic, graph
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, 'teacher.graph.safetensors')
    size = args.resolution or 32
    try:
        print(generic.export(args.arch, path, args.checkpoint, (size, size), json.loads(args.kwargs), args.ema))
        module, variables, probe = graph.load(path)
    except (generic.ExportError, graph.UnsupportedOp) as e:
        print(f'error: {args.arch} ({args.checkpoint}): {e}', file=sys.stderr)
        return 1
    result = graph.parity(module, variables, probe)
    worst = max(result['taps'].items(), key=lambda kv: kv[1])
    print(f'parity at {size}px: logits max relative error {result["logits"]:.3g}; worst tap {worst[0]} '
          f'relative error {worst[1]:.3g}')
    for tap in module.taps():
        print(f'  {tap.name} ({tap.channels} channels, stride {tap.stride}): {result["taps"][tap.name]:.3g}')
    meta = {'arch': args.arch, 'num_classes': module.num_classes, 'resolution': size,
            'kwargs': json.loads(args.kwargs), 'checkpoint': os.path.basename(args.checkpoint),
            'checkpoint_sha256': sha256(args.checkpoint), 'ema': bool(args.ema),
            'ops': list(module.graph.ops), 'taps': [dataclasses.asdict(t) for t in module.taps()],
            'parity': result}
    with open(os.path.join(args.out, 'teacher.json'), 'w') as f:
        json.dump(meta, f, indent=2)
    print(f'wrote {path} and {os.path.join(args.out, "teacher.json")} ({module.num_classes} classes)')
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='python -m kamal_jax.porting', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--arch', required=True,
                        help="architecture name, e.g. resnet18, or 'auto' (read from the weights)")
    parser.add_argument('--checkpoint', required=True,
                        help='.pth .pt .th .tar .bin .ckpt (torch.save) or .safetensors')
    parser.add_argument('--out', required=True, help='output directory')
    parser.add_argument('--resolution', type=int, default=None,
                        help='input size for the parity check (default: 32, a ViT its own size)')
    parser.add_argument('--widths', nargs='*', default=None,
                        help='(stem, stage1, ...) widths, comma or space separated')
    parser.add_argument('--ema', action='store_true', help='port the EMA weights of the checkpoint')
    parser.add_argument('--pretrained-cfg', default=None,
                        help='timm pretrained_cfg / config.json (architecture, mean, std, input '
                             'size); config.json next to the checkpoint is read by default')
    parser.add_argument('--no-parity', action='store_true', help='skip the PyTorch comparison')
    parser.add_argument('--kwargs', default='{}',
                        help='JSON keyword arguments of a torch:/torchvision: factory')
    return parser


def _print_parity(result, resolution: int) -> None:
    if result is None:
        print('parity: skipped (PyTorch or a PyTorch twin of this architecture is unavailable)')
        return
    worst = max(result['tap_max_rel_error'].items(), key=lambda kv: kv[1])
    print(f'parity at {resolution}px: logits max |diff| '
          f'{result["logits_max_abs_diff"]:.3g}; worst tap {worst[0]} relative error '
          f'{worst[1]:.3g}')
    for name, err in result['tap_max_rel_error'].items():
        print(f'  {name}: {err:.3g}')


def _ported_card(args, architecture, num_classes: int, resolution: int, variables, result, cfg, card) -> dict:
    """What `OUT/teacher.json` says of a ported checkpoint (see the module's docstring)."""
    import jax
    meta = {
        'arch': architecture.arch,
        'requested_arch': args.arch,
        'num_classes': num_classes,
        'widths': list(architecture.widths) if architecture.widths else None,
        'architecture': architecture.to_json(),
        'resolution': resolution,
        'checkpoint': os.path.basename(args.checkpoint),
        'checkpoint_sha256': sha256(args.checkpoint),
        'ema': bool(args.ema),
        'num_params': int(sum(np.size(x) for x in jax.tree.leaves(variables.get('params', {})))),
        'parity': result,
    }
    if cfg is not None:
        meta['pretrained_cfg'] = {'source': os.path.basename(cfg.source),
                                  'architecture': cfg.architecture, 'mean': cfg.mean,
                                  'std': cfg.std, 'input_size': cfg.input_size}
    if card is not None:
        meta['card'] = card
    return meta


def _port(args, widths):
    """(pretrained cfg, state_dict, architecture, resolution, module, variables) of the checkpoint;
    a PortingError, CheckpointFormatError or missing file raises, naming what is wrong."""
    from kamal_jax import porting
    cfg = _pretrained_cfg(args)
    state_dict = porting.load_state_dict(args.checkpoint, args.ema)
    architecture = porting.resolve(args.arch, state_dict, widths, cfg.architecture if cfg else None)
    resolution = args.resolution or architecture.input_size
    module, variables = porting.port_architecture(architecture, state_dict, (1, resolution, resolution, 3))
    return cfg, state_dict, architecture, resolution, module, variables


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ['inspect']:
        return inspect_main(argv[1:])
    args = _parser().parse_args(argv)
    if args.arch.startswith(('torch:', 'torchvision:')):
        return generic_main(args)

    import jax
    from flax import serialization

    from kamal_jax import porting

    card = _sibling_card(args.checkpoint)
    widths = _parse_widths(args.widths)
    if widths is None and card and card.get('widths'):
        widths = tuple(int(w) for w in card['widths'])
    try:
        cfg, state_dict, architecture, resolution, module, variables = _port(args, widths)
    except porting.PortingError as e:
        print(f'error: {args.checkpoint}: {e}', file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError) as e:  # CheckpointFormatError included: names the file
        print(f'error: {e}', file=sys.stderr)
        return 1
    if card and card.get('arch') not in (None, architecture.arch):
        print(f'warning: the teacher card next to the checkpoint says arch {card["arch"]!r}, '
              f'ported as {architecture.arch!r}.', file=sys.stderr)
    if args.arch == porting.AUTO:
        print(f'auto: {architecture.describe()}')
    variables = jax.tree.map(np.asarray, variables)
    num_classes = int(module.num_classes)

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, 'variables.msgpack'), 'wb') as f:
        f.write(serialization.msgpack_serialize(variables))

    result = None
    if not args.no_parity:
        result = parity(architecture, state_dict, module, variables, resolution)
        _print_parity(result, resolution)
    meta = _ported_card(args, architecture, num_classes, resolution, variables, result, cfg, card)
    with open(os.path.join(args.out, 'teacher.json'), 'w') as f:
        json.dump(meta, f, indent=2)
    print(f'wrote {os.path.join(args.out, "variables.msgpack")} and '
          f'{os.path.join(args.out, "teacher.json")} ({architecture.arch}, {num_classes} classes)')
    return 0

if __name__ == '__main__':
    sys.exit(main())
