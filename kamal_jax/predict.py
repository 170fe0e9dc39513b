"""Apply an exported student to a folder of images: one CSV row per image.

    kamal-jax predict EXPORT_DIR IMAGE_FOLDER --out predictions.csv
    python -m kamal_jax.predict runs/mine/export ~/photos --out predictions.csv

Columns: path (relative to the folder), then per task the predicted class and its probability.
Files are decoded and resized as a training folder's are (`kamal_jax.data.folder`): EXIF orientation
applied, RGB with alpha on white, centre crop to the export's image size; files that are not
readable images are skipped, counted, and listed in OUT.skipped.tsv.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import os
import sys

import numpy as np

from kamal_jax.data import folder

__all__ = ['predict_folder', 'main']


def predict_folder(export_dir: str, root: str, out_csv: str, *, batch_size: int = 256, workers: int = 0) -> dict:
    """Writes the CSV; returns {'rows': n, 'skipped': [(path, why)], 'csv': out_csv}."""
    root = os.path.abspath(os.path.expanduser(root))
    files = folder.check_folder(root, 'IMAGE_FOLDER')
    import jax
    from kamal_jax.export import load_student
    student = load_student(export_dir)
    size = tuple(student.card['image_size'])
    tasks = [t for t, _ in student.card['heads']]
    classes = {t: student.card['tasks'][t]['classes'] for t in tasks}
    apply = jax.jit(student.predict)  # one compilation: every batch is padded to batch_size
    skipped, rows = [], 0
    workers = workers or min(8, os.cpu_count() or 1)
    tmp = f'{out_csv}.tmp{os.getpid()}'
    with open(tmp, 'w', newline='') as f, concurrent.futures.ThreadPoolExecutor(workers) as pool:
        writer = csv.writer(f)
        writer.writerow(['path'] + [c for t in tasks for c in (t, f'{t}_probability')])
        for i in range(0, len(files), batch_size):
            part = files[i:i + batch_size]
            results = list(pool.map(lambda rel: folder.read_image(os.path.join(root, rel), size), part))
            good = [(rel, img) for rel, (img, _) in zip(part, results) if img is not None]
            skipped += [(rel, why) for rel, (img, why) in zip(part, results) if img is None]
            if not good:
                continue
            images = np.zeros((batch_size, *size, 3), np.float32)
            images[:len(good)] = np.stack([img for _, img in good]) / np.float32(255.0)
            probs = {t: np.asarray(p) for t, p in apply(images).items()}
            for j, (rel, _) in enumerate(good):
                row = [rel]
                for t in tasks:
                    k = int(np.argmax(probs[t][j]))
                    row += [classes[t][k], f'{probs[t][j][k]:.6f}']
                writer.writerow(row)
            rows += len(good)
    if not rows:
        os.remove(tmp)
        raise folder.FolderError(f'IMAGE_FOLDER = {root!r} holds no readable image: all {len(files)} files were '
                                 f'skipped (first: {skipped[0][0]!r}, {skipped[0][1]}).')
    os.replace(tmp, out_csv)
    if skipped:
        folder.write_skipped(f'{out_csv}.skipped.tsv', skipped)
    return {'rows': rows, 'skipped': skipped, 'csv': out_csv}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='kamal-jax predict', description=__doc__.split('\n')[0])
    parser.add_argument('export', help='an export directory of a run (WORKDIR/export)')
    parser.add_argument('folder', help='a folder of images (sub-folders are read too)')
    parser.add_argument('--out', required=True, help='the CSV to write')
    parser.add_argument('--batch_size', type=int, default=256)
    args = parser.parse_args(argv)
    if args.batch_size <= 0:
        parser.error(f'--batch_size must be positive, got {args.batch_size}.')
    if os.path.exists(args.out) and not os.path.isfile(args.out):
        parser.error(f'--out = {args.out!r} is not a file.')
    try:
        result = predict_folder(args.export, args.folder, args.out, batch_size=args.batch_size)
    except (folder.FolderError, FileNotFoundError, ValueError) as e:
        print(f'error: {" ".join(str(e).split())}', file=sys.stderr)
        return 1
    tail = (f'; {len(result["skipped"])} files skipped, listed in {args.out}.skipped.tsv'
            if result['skipped'] else '')
    print(f'{result["rows"]} images predicted into {args.out}{tail}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
