"""Writes a large unlabelled-style training set once: N random crops of a dataset's training images.

    python -m kamal_jax.data.crops --dataset kamal_cifar10 --size 500000 --out ~/kamal_records/cifar10_crops_500k

Why: streaming input (`kamal_jax.data.records`) exists for sets larger than host memory, and the
shared datasets are small. Each image is one training image, zero-padded by `--padding` pixels,
cropped back to its size at a random offset and flipped at random: pixels only move, so the set is
as real as its source, and N may exceed the source tenfold. The records are what a run reads
through `--config.data.train_records=DIR`. Labels come along (the `supervised` baseline and the
selection report read them). It is written where it is used: nothing about it needs to travel.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import numpy as np

from kamal_jax.data import datasets, records
from kamal_jax.progress import Progress

log = logging.getLogger('kamal_jax')
CHUNK = 8192


def random_crops(images: np.ndarray, index: np.ndarray, rng: np.random.Generator, padding: int) -> np.ndarray:
    """images[index], each zero-padded by `padding`, cropped back at a random offset, flipped at random."""
    n, (h, w) = len(index), images.shape[1:3]
    padded = np.pad(images[index], ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    dy, dx = rng.integers(0, 2 * padding + 1, n), rng.integers(0, 2 * padding + 1, n)
    rows = dy[:, None] + np.arange(h)[None]   # [n, h]
    cols = dx[:, None] + np.arange(w)[None]   # [n, w]
    out = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    flip = rng.random(n) < 0.5
    out[flip] = out[flip, :, ::-1]
    return out


def write_crops(out: str, *, dataset: str, split: str, size: int, padding: int, seed: int,
                image_size=None, data_dir=None, manual_dir=None) -> str:
    source = datasets.load(dataset, split, data_dir=data_dir, manual_dir=manual_dir, image_size=image_size)
    rng = np.random.default_rng(seed)
    progress = Progress(f'writing {size} crops of {dataset} {split}', size, 'images')

    def chunks():
        for start in range(0, size, CHUNK):
            index = rng.integers(0, len(source.images), min(CHUNK, size - start))
            progress.update(len(index))
            yield random_crops(source.images, index, rng, padding), {k: v[index] for k, v in source.labels.items()}
    return records.write(out, chunks(), shape=source.images.shape[1:], label_names=source.label_names,
                         name=f'{dataset}_crops', split=f'{split}_crops_{size}',
                         source={'dataset': dataset, 'split': split, 'size': size, 'padding': padding, 'seed': seed})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', required=True, help='the records folder to write (refused if it exists)')
    p.add_argument('--dataset', default='kamal_cifar10')
    p.add_argument('--split', default='train')
    p.add_argument('--size', type=int, default=500_000, help='number of crops')
    p.add_argument('--padding', type=int, default=4, help='pixels of zero padding before the crop')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--data_dir', default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s', datefmt='%H:%M:%S')
    out = os.path.expanduser(args.out)
    if os.path.exists(out):
        print(f'error: --out {out!r} exists; it is never overwritten: remove it or choose another folder.',
              file=sys.stderr)
        return 2
    if args.size <= 0 or args.padding < 0:
        print('error: --size must be positive and --padding >= 0.', file=sys.stderr)
        return 2
    write_crops(out, dataset=args.dataset, split=args.split, size=args.size, padding=args.padding,
                seed=args.seed, data_dir=args.data_dir)
    info = records.read_info(out)
    print(f'wrote {info["count"]} images of {tuple(info["shape"])} to {out} '
          f'({sum(os.path.getsize(os.path.join(out, s)) for s in info["shards"]) / 2 ** 30:.2f} GiB)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
