"""Decode-and-write throughput of an image folder into records (`kamal_jax.data.folder`), and peak
host memory; a second load times the reuse.

    python -m kamal_jax.benchmarks.folder_records FOLDER --data_dir /tmp/bench_records --size 32 [--workers N] \
        [--json docs/results/folder_records_32.json]

FOLDER is e.g. the CIFAR-10 train set unpacked from cifar10.tar.gz (`tar -xzf cifar10.tar.gz
cifar10/train`: 50000 JPEGs). The records written under --data_dir are deleted first.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import time


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('folder')
    p.add_argument('--data_dir', required=True)
    p.add_argument('--size', type=int, default=32)
    p.add_argument('--workers', type=int, default=0, help='decoding threads (0: one per core, at most 8)')
    p.add_argument('--json', default='', help='also write the figures, the command and the machine to this file')
    args = p.parse_args(argv)
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
    import logging
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    import numpy as np
    from kamal_jax.api import load_folder, resize_array
    shutil.rmtree(args.data_dir, ignore_errors=True)
    size = (args.size, args.size)
    resize_array(np.zeros((8, 8, 3), np.uint8), size)  # TensorFlow imported and traced before timing
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    found = load_folder(args.folder, image_size=size, data_dir=args.data_dir, workers=args.workers)
    took = time.perf_counter() - t0
    t1 = time.perf_counter()
    again = load_folder(args.folder, image_size=size, data_dir=args.data_dir, workers=args.workers)
    reuse = time.perf_counter() - t1
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n = len(found.paths)
    print(f'{n} images ({len(found.skipped)} skipped) at {size[0]}x{size[1]}: {took:.1f}s, {n / took:.0f} images/s; '
          f'peak host memory {peak:.0f} MiB ({base:.0f} MiB before the first load: Python, TensorFlow); '
          f'records {found.split.images.nbytes / 2 ** 20:.0f} MiB of pixels; reuse {reuse:.2f}s '
          f'({"reused" if again.reused else "NOT reused"})')
    if args.json:
        import json
        import platform
        import sys
        record = {'command': 'python -m kamal_jax.benchmarks.folder_records ' + ' '.join(sys.argv[1:] if argv is None
                                                                                      else argv),
                  'machine': f'{platform.machine()}, {os.cpu_count()} cores, {_cpu_name()}',
                  'date': time.strftime('%Y-%m-%d'), 'images': n, 'skipped': len(found.skipped),
                  'image_size': list(size), 'seconds': round(took, 2), 'images_per_s': round(n / took, 1),
                  'peak_host_mib': round(peak), 'host_mib_before_load': round(base),
                  'pixels_mib': round(found.split.images.nbytes / 2 ** 20), 'reuse_seconds': round(reuse, 2),
                  'reused': bool(again.reused)}
        with open(args.json, 'w') as f:
            json.dump(record, f, indent=2)


def _cpu_name() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            return next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        return 'unknown CPU'


if __name__ == '__main__':
    main()
