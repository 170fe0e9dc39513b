"""Converts one PyTorch teacher checkpoint into Flax variables.

    python -m kamal_jax.porting --arch resnet18 --checkpoint teacher.pth --out ported/ \
        [--resolution 32] [--widths 64,64,128,256,512]

Writes `OUT/variables.msgpack` (`flax.serialization.msgpack_serialize` of the numpy variables)
and `OUT/teacher.json` (arch, num_classes, widths, checkpoint sha256, parity). When PyTorch is
installed and `kamal_jax.zoo.torch_models` can build the architecture, the ported model is run
next to the PyTorch one on random inputs and the largest differences are printed. A teacher card
next to the checkpoint (`teacher.json` for `teacher.pth`, as the zoo writes them) is copied in,
and its widths are used when `--widths` is not given.
"""

from __future__ import annotations

import argparse
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


def parity(arch, num_classes, widths, state_dict, module, variables, resolution, seed=0):
    """Max |logit diff| and per-tap relative error vs. the PyTorch twin; None if unavailable."""
    if torch is None:
        return None
    from kamal_jax.zoo import torch_models
    if arch not in torch_models.ARCHS:
        return None
    model = torch_models.build(arch, num_classes, widths)
    tensors = {k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if not k.endswith('num_batches_tracked')]
    if missing or unexpected:
        raise RuntimeError(f'PyTorch {arch} does not load the checkpoint: missing {missing}, '
                           f'unexpected {unexpected}.')
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='python -m kamal_jax.porting', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--arch', required=True, help='architecture name, e.g. resnet18')
    parser.add_argument('--checkpoint', required=True, help='.pth/.pt state_dict or .safetensors')
    parser.add_argument('--out', required=True, help='output directory')
    parser.add_argument('--resolution', type=int, default=32,
                        help='input size used to build the model and for the parity check')
    parser.add_argument('--widths', nargs='*', default=None,
                        help='(stem, stage1, ...) widths, comma or space separated')
    parser.add_argument('--no-parity', action='store_true', help='skip the PyTorch comparison')
    args = parser.parse_args(argv)

    import jax
    from flax import serialization

    from kamal_jax import porting

    card = _sibling_card(args.checkpoint)
    widths = _parse_widths(args.widths)
    if widths is None and card and card.get('widths'):
        widths = tuple(int(w) for w in card['widths'])
    if card and card.get('arch') not in (None, args.arch):
        print(f'warning: the teacher card next to the checkpoint says arch {card["arch"]!r}, '
              f'porting as {args.arch!r}.', file=sys.stderr)

    input_shape = (1, args.resolution, args.resolution, 3)
    try:
        state_dict = porting.load_state_dict(args.checkpoint)
        module, variables = porting.port(args.arch, state_dict, widths, input_shape)
    except (FileNotFoundError, ValueError) as e:  # PortingError, CheckpointFormatError included.
        print(f'error: {e}', file=sys.stderr)
        return 1
    variables = jax.tree.map(np.asarray, variables)
    num_classes = int(module.num_classes)

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, 'variables.msgpack'), 'wb') as f:
        f.write(serialization.msgpack_serialize(variables))

    result = None
    if not args.no_parity:
        result = parity(args.arch, num_classes, widths, state_dict, module, variables,
                        args.resolution)
        if result is None:
            print('parity: skipped (PyTorch or a PyTorch twin of this architecture is unavailable)')
        else:
            worst = max(result['tap_max_rel_error'].items(), key=lambda kv: kv[1])
            print(f'parity at {args.resolution}px: logits max |diff| '
                  f'{result["logits_max_abs_diff"]:.3g}; worst tap {worst[0]} relative error '
                  f'{worst[1]:.3g}')
            for name, err in result['tap_max_rel_error'].items():
                print(f'  {name}: {err:.3g}')

    meta = {
        'arch': args.arch,
        'num_classes': num_classes,
        'widths': list(widths) if widths else None,
        'resolution': args.resolution,
        'checkpoint': os.path.basename(args.checkpoint),
        'checkpoint_sha256': sha256(args.checkpoint),
        'num_params': int(sum(np.size(x) for x in jax.tree.leaves(variables.get('params', {})))),
        'parity': result,
    }
    if card is not None:
        meta['card'] = card
    with open(os.path.join(args.out, 'teacher.json'), 'w') as f:
        json.dump(meta, f, indent=2)
    print(f'wrote {os.path.join(args.out, "variables.msgpack")} and '
          f'{os.path.join(args.out, "teacher.json")} ({args.arch}, {num_classes} classes)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
