"""A run from your own image folder: skipped files listed, records reused, accuracies from a labelled
class-per-subfolder folder, label-free diagnostics without one, `kamal-jax predict` on the export, and
an unpacked kamal_cifar10 archive giving the TFDS path's batches and trained parameters."""
import csv
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import photos
import toy
from kamal_jax import pipeline
from kamal_jax.data import folder
from kamal_jax.tasks import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = (16, 16)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """The mixed photo folder, a labelled folder (classes a..e plus one no task names) and one teacher
    checkpoint (7 classes) that both teachers read: two identical teachers."""
    base = tmp_path_factory.mktemp('own')
    good = photos.write_mixed(str(base / 'photos'))
    photos.write_mixed(str(base / 'labelled'), count=40, seed=1, classes=photos.CLASSES + ('unused',))
    code = f'''
import torch
from kamal_jax import torch_models
torch.manual_seed(0)
torch.save(torch_models.build('cifar_resnet8', 7).state_dict(), {str(base / 'teacher.pth')!r})
'''
    subprocess.run([sys.executable, '-c', code], check=True, cwd=ROOT)
    return base, good


def config(base, classes=photos.CLASSES, **data):
    c = toy.quickstart_config('tiny', recipe='average')
    del c.zoo
    c.data = dict(train_folder=str(base / 'photos'), eval_folder='', holdout_fraction=0.2, image_size=SIZE,
                  data_dir=str(base / 'data'), mean=(0.5,) * 3, std=(0.25,) * 3, crop_padding=0, flip=False,
                  train_limit=0, eval_limit=0, views=0, streaming='auto', memory_limit_gb=4.0, prefetch=-1,
                  train_records='')
    c.data.update(data)
    head = dict(kind='multiclass', classes=list(classes), logits=(1, 6))
    c.teachers = {name: dict(arch='cifar_resnet8', checkpoint=str(base / 'teacher.pth'), mean=(0.5,) * 3,
                             std=(0.25,) * 3, heads={'shape': head}) for name in ('t1', 't2')}
    c.target_tasks = ('shape',)
    c.stage1.epochs = c.stage2.epochs = 1
    c.stage1.batch_size = c.stage2.batch_size = 32
    c.eval_every, c.log_every = 0, 5
    return c


@pytest.fixture(scope='module')
def unlabelled_run(files):
    base, _ = files
    workdir = str(base / 'run')
    c = config(base)
    c.eval_every = 4  # asked for, but there is nothing to score without labels
    return workdir, pipeline.run(c, workdir)


@pytest.fixture(scope='module')
def labelled_run(files, unlabelled_run):
    base, _ = files
    workdir = str(base / 'run_labelled')
    real_decode = folder.decode
    decoded = []
    folder.decode = lambda path: decoded.append(path) or real_decode(path)
    try:
        summary = pipeline.run(config(base, eval_folder=str(base / 'labelled')), workdir)
    finally:
        folder.decode = real_decode
    return workdir, summary, decoded


def test_skipped_files_are_listed_and_a_share_is_held_out(files, unlabelled_run):
    base, good = files
    workdir, summary = unlabelled_run
    lines = open(os.path.join(workdir, 'skipped_images.tsv')).read().splitlines()
    assert lines[0] == 'field\tpath\treason'
    assert sorted(line.split('\t')[1] for line in lines[1:]) == sorted(photos.BAD)
    held = open(os.path.join(workdir, 'held_out_images.txt')).read().split()
    assert len(held) == round(0.2 * len(good)) and set(held) <= set(good)
    assert summary['data'] == {'name': str(base / 'photos'), 'train': len(good) - len(held), 'eval': len(held),
                               'labelled_eval': False}
    assert '4 files skipped' in open(os.path.join(workdir, 'log.txt')).read()


def test_without_labels_the_summary_holds_diagnostics_numpy_reproduces(files, unlabelled_run):
    import kamal_jax
    from kamal_jax import teachers as teachers_lib
    from kamal_jax.tasks import plan_from_config
    from kamal_jax.train import evaluate as eval_lib
    base, _ = files
    workdir, summary = unlabelled_run
    assert all(not m['accuracy'] for m in summary['models'].values())  # no labels: no accuracy
    d = summary['models']['target']['diagnostics']['shape']
    held = open(os.path.join(workdir, 'held_out_images.txt')).read().split()
    images = np.stack([folder.read_image(str(base / 'photos' / p), SIZE)[0] for p in held])
    student = np.asarray(kamal_jax.load_student(os.path.join(workdir, 'export')).predict(images / 255.0)['shape'])
    spec = plan_from_config(config(base)).teachers[0]
    net, variables = teachers_lib.load_teacher(spec, os.path.join(workdir, 'teachers'), SIZE)
    logits = np.asarray(eval_lib.predict(net, variables, images)['shape'], np.float64)
    teacher = np.exp(logits - logits.max(-1, keepdims=True))
    teacher /= teacher.sum(-1, keepdims=True)
    agree = float(np.mean(student.argmax(-1) == teacher.argmax(-1)))
    assert d['images'] == len(held)
    assert d['agreement'] == pytest.approx({'t1': agree, 't2': agree})
    assert d['agreement_with_combined'] == pytest.approx(agree)
    assert d['teacher_disagreement'] == 0.0  # two identical teachers
    assert d['selected_fraction'] == {'t1': 1.0, 't2': 0.0}  # ties go to the first
    h = lambda p: float(np.mean(-np.sum(p * np.log(p), -1)))
    assert d['mean_entropy'] == pytest.approx({'student': h(student), 't1': h(teacher), 't2': h(teacher)}, rel=1e-4)
    summary_md = open(os.path.join(workdir, 'summary.md')).read()
    assert 'Label-free diagnostics' in summary_md
    assert '| model | role | arch | params | MFLOPs/image |\n' in summary_md  # no empty accuracy columns
    assert 'Label-free diagnostics' in open(os.path.join(workdir, 'report', 'index.html')).read()
    scalars = [json.loads(line) for line in open(os.path.join(workdir, 'tb', 'diagnostics', 'metrics.jsonl'))]
    assert any(s.get('diagnostics/target/shape/agreement/t1') == pytest.approx(agree) for s in scalars)
    # The log says what was measured instead of printing empty accuracies.
    log_text = open(os.path.join(workdir, 'log.txt')).read()
    assert 'teacher t1 (cifar_resnet8): not scored (no labelled held-out images)' in log_text
    assert f"target: shape agrees with the least ambiguous teacher on {100 * agree:.1f}% of {len(held)} " in log_text
    assert 'held-out accuracy' not in log_text and not re.search(r'(?m): $', log_text)


def test_a_labelled_folder_gives_accuracies_beside_the_diagnostics_and_the_records_are_reused(files, labelled_run):
    base, good = files
    workdir, summary, decoded = labelled_run
    assert not any(p.startswith(str(base / 'photos')) for p in decoded)  # the training folder: reused
    assert len(decoded) == 40  # the labelled folder was decoded once
    assert summary['data']['labelled_eval'] and summary['data']['train'] == len(good)
    target = summary['models']['target']
    assert set(target['accuracy']) == {'shape'} and 0.0 <= target['accuracy']['shape'] <= 1.0
    assert set(summary['models']['t1']['accuracy']) == {'shape'}
    assert target['diagnostics']['shape']['images'] == 40
    log = open(os.path.join(workdir, 'log.txt')).read()
    assert 'records reused' in log
    assert "sub-folder(s) ['unused'] name no class of the target tasks" in log


def test_predict_on_the_folder_equals_load_student_in_python(files, unlabelled_run, tmp_path, capsys):
    import kamal_jax
    from kamal_jax import predict
    base, good = files
    workdir, _ = unlabelled_run
    export = os.path.join(workdir, 'export')
    out = tmp_path / 'pred.csv'
    assert predict.main([export, str(base / 'photos'), '--out', str(out), '--batch_size', '64']) == 0
    assert f'{len(good)} images predicted' in capsys.readouterr().out
    rows = list(csv.DictReader(open(out)))
    assert [r['path'] for r in rows] == good
    skipped = [line.split('\t')[0] for line in open(f'{out}.skipped.tsv').read().splitlines()[1:]]
    assert sorted(skipped) == sorted(photos.BAD)
    images = np.stack([folder.read_image(str(base / 'photos' / p), SIZE)[0] for p in good]) / 255.0
    p = np.asarray(kamal_jax.load_student(export).predict(images)['shape'])
    assert [r['shape'] for r in rows] == [photos.CLASSES[k] for k in p.argmax(-1)]
    np.testing.assert_allclose([float(r['shape_probability']) for r in rows], p.max(-1), atol=2e-6)
    bad = subprocess.run([sys.executable, '-c', 'from kamal_jax import cli; cli.main()', 'predict', export,
                          str(tmp_path / 'nothing'), '--out', str(tmp_path / 'x.csv')], cwd=ROOT,
                         capture_output=True, text=True, env={**os.environ, 'PYTHONPATH': ROOT})
    assert bad.returncode == 1 and "IMAGE_FOLDER = '" in bad.stderr and 'is not a folder' in bad.stderr


@pytest.mark.parametrize('data,words', [
    (dict(holdout_fraction=1.5), r'data\.holdout_fraction must be a number between 0 and 1'),
    (dict(train_folder='/nonexistent/photos'), r"data\.train_folder = '/nonexistent/photos' is not a folder"),
    (dict(image_size=()), r'data\.image_size must say the size'),
    (dict(train_records='x'), r'data\.train_folder = .* and data\.train_records = .* both name'),
])
def test_bad_folder_fields_are_one_sentence(files, tmp_path, data, words):
    base, _ = files
    with pytest.raises(ConfigError, match=words):
        pipeline.run(config(base, **data), str(tmp_path / 'w'))
    assert not (tmp_path / 'w').exists()


def test_a_task_class_without_a_sub_folder_is_refused_before_work(files, tmp_path):
    base, _ = files
    (tmp_path / 'eval' / 'a').mkdir(parents=True)
    (tmp_path / 'eval' / 'b').mkdir()
    src = next(p for p in (base / 'labelled' / 'a').iterdir() if p.suffix == '.png')
    for c in ('a', 'b'):
        (tmp_path / 'eval' / c / 'x.png').write_bytes(src.read_bytes())
    with pytest.raises(ConfigError, match=r"data\.eval_folder = '.*eval' has no sub-folder for class\(es\) "
                                          r"\['c', 'd', 'e'\] of task 'shape'"):
        pipeline.run(config(base, eval_folder=str(tmp_path / 'eval')), str(tmp_path / 'w'))
    assert not (tmp_path / 'w').exists()


# ------------------------------------------------------- an unpacked archive feeds the TFDS path's batches
CIFAR_SIZE = (40, 40)  # not the archive's 32x32: both paths resize


@pytest.fixture(scope='module')
def cifar(tmp_path_factory):
    """A stand-in of cifar10.tar.gz (8 training and 2 test JPEGs per class), built by the kamal_cifar10
    TFDS builder and unpacked to a folder; with the member names of each split in TFDS's stored order."""
    import tarfile
    import test_datasets as td
    from kamal_jax.data import datasets as kd
    from kamal_jax.data.builders.cifar10 import CLASS_NAMES, KamalCifar10
    tfds = pytest.importorskip('tensorflow_datasets')
    base = tmp_path_factory.mktemp('cifar')
    rng = np.random.default_rng(0)
    members = [(f'cifar10/{split}/{c}/{i:04d}.jpg', td._jpeg(rng, 32, 32))
               for split, n in (('train', 8), ('test', 2)) for c in CLASS_NAMES for i in range(n)]
    (base / 'manual').mkdir()
    td._write_tar_gz(base / 'manual' / 'cifar10.tar.gz', members)
    with tarfile.open(base / 'manual' / 'cifar10.tar.gz') as tar:
        tar.extractall(base / 'unpacked', filter='data')
    old, KamalCifar10.EXPECTED_COUNTS = KamalCifar10.EXPECTED_COUNTS, None
    try:
        builder = kd.prepared_builder('kamal_cifar10', data_dir=base / 'data', manual_dir=base / 'manual')
    finally:
        KamalCifar10.EXPECTED_COUNTS = old
    skip = {'image': tfds.decode.SkipDecoding()}
    order = {split: [ex['file_name'].decode() for ex in
                     tfds.as_numpy(builder.as_dataset(split, shuffle_files=False, decoders=skip))]
             for split in ('train', 'test')}
    return base, order


def test_an_unpacked_archive_gives_the_tfds_path_rows_in_its_order_and_so_its_batches(cifar):
    from kamal_jax.data import datasets as kd
    from kamal_jax.train.batches import EpochBatches
    base, order = cifar
    images = {}
    for split, labelled in (('test', True), ('train', False)):
        tf_split = kd.load('kamal_cifar10', split, data_dir=base / 'data', manual_dir=base / 'manual',
                           image_size=CIFAR_SIZE)
        found = folder.load(str(base / 'unpacked' / 'cifar10' / split), image_size=CIFAR_SIZE,
                            data_dir=str(base / 'data'), labelled=labelled)
        assert [f'cifar10/{split}/{p}' for p in found.paths] == order[split]  # TFDS's stored order
        assert found.paths != sorted(found.paths)  # (which is not the listing's)
        np.testing.assert_array_equal(found.split.images, tf_split.images)
        if labelled:
            assert found.split.label_names == tf_split.label_names
            np.testing.assert_array_equal(found.split.labels['label'], tf_split.labels['label'])
        images[split] = tf_split.images, found.split.images
    a = EpochBatches({'image': images['train'][0]}, 16, seed=1)
    b = EpochBatches({'image': images['train'][1]}, 16, seed=1)
    for step in range(2 * a.steps_per_epoch):
        np.testing.assert_array_equal(a.batch(step)['image'], b.batch(step)['image'])


def test_a_run_from_the_unpacked_archive_ends_with_the_tfds_runs_parameters(files, cifar):
    import jax
    import kamal_jax
    from kamal_jax.data.builders.cifar10 import CLASS_NAMES
    base, _ = files
    cifar_base, _ = cifar
    unpacked = cifar_base / 'unpacked' / 'cifar10'
    common = dict(classes=CLASS_NAMES[:5], image_size=CIFAR_SIZE, data_dir=str(cifar_base / 'data'),
                  crop_padding=4, flip=True)
    runs = {}
    for how, data in (('tfds', dict(name='kamal_cifar10', manual_dir=str(cifar_base / 'manual'), train_folder='')),
                      ('folder', dict(train_folder=str(unpacked / 'train'), eval_folder=str(unpacked / 'test')))):
        c = config(base, **common, **data)
        c.teachers = {'t1': c.teachers['t1']}  # one teacher is enough here (and compiles faster)
        c.stage1.batch_size = c.stage2.batch_size = 16  # 5 steps an epoch on the 80 training images
        summary = pipeline.run(c, str(cifar_base / how))
        runs[how] = summary, kamal_jax.load_student(str(cifar_base / how / 'export'))
    (tfds_summary, tfds_student), (folder_summary, folder_student) = runs['tfds'], runs['folder']
    assert tfds_summary['data']['train'] == folder_summary['data']['train'] == 80
    for name, model in tfds_summary['models'].items():
        assert folder_summary['models'][name]['accuracy'] == model['accuracy'], name
    leaves = jax.tree_util.tree_leaves_with_path(tfds_student.variables)
    other = dict(jax.tree_util.tree_leaves_with_path(folder_student.variables))
    assert len(leaves) == len(other) > 10
    for path, value in leaves:
        np.testing.assert_array_equal(np.asarray(other[path]), np.asarray(value), err_msg=jax.tree_util.keystr(path))
