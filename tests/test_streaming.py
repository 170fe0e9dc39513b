"""Streaming input: records on disk hold the in-memory pixels, feed the same batches, resume exactly."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

import toy
from kamal_jax import config_checks, pipeline
from kamal_jax.config_checks import check_input
from kamal_jax.data import datasets, records
from kamal_jax.tasks import ConfigError
from kamal_jax.train import sharding, teacher_cache
from kamal_jax.train.checkpoint import Checkpointer
from kamal_jax.train.batches import BatchStream, EpochBatches
from kamal_jax.train.loop import fit
from kamal_jax.train.state import create_state, make_optimizer
from kamal_jax.train.steps import make_train_step


@pytest.fixture(scope='module')
def digits(tmp_path_factory):
    """kamal_digits' training split at 16x16, in memory and as records written by `load(streaming=True)`."""
    data_dir = tmp_path_factory.mktemp('tfds')
    kw = dict(data_dir=data_dir, image_size=(16, 16))
    return datasets.load('kamal_digits', 'train', **kw), datasets.load('kamal_digits', 'train', streaming=True, **kw)


def test_records_hold_exactly_the_in_memory_pixels_and_labels(digits):
    memory, streamed = digits
    assert isinstance(streamed.images, records.RecordImages) and isinstance(memory.images, np.ndarray)
    assert streamed.images.shape == memory.images.shape == (1347, 16, 16, 3)
    np.testing.assert_array_equal(streamed.images[:], memory.images)
    assert streamed.label_names == memory.label_names
    for key in memory.labels:
        np.testing.assert_array_equal(streamed.labels[key], memory.labels[key])
    rows = np.array([1346, 0, 7, 7, 500])
    np.testing.assert_array_equal(streamed.images[rows], memory.images[rows])
    np.testing.assert_array_equal(streamed.images[-1], memory.images[-1])
    with pytest.raises(IndexError):
        streamed.images[np.array([1347])]


def test_a_second_load_reuses_the_records_and_a_subset_reads_lazily(digits, tmp_path):
    memory, streamed = digits
    again = datasets.load('kamal_digits', 'train', data_dir=os.path.dirname(os.path.dirname(os.path.dirname(
        streamed.images.directory))), image_size=(16, 16), streaming=True)
    assert again.images.directory == streamed.images.directory
    assert again.images.fingerprint == streamed.images.fingerprint
    keep = np.array([5, 9, 1000, 3])
    sub = records.take(streamed, keep)
    assert isinstance(sub.images, records.RecordImages) and len(sub.images) == 4
    np.testing.assert_array_equal(sub.images[1:3], memory.images[keep[1:3]])
    np.testing.assert_array_equal(sub.labels['label'], memory.labels['label'][keep])
    assert sub.images.fingerprint != streamed.images.fingerprint  # caches tell the two apart
    # What a cache keys on: the records' fingerprint, without reading the images.
    assert teacher_cache._checksum(sub.images) == sub.images.fingerprint


def test_both_paths_feed_identical_batches_through_the_stream(digits):
    memory, streamed = digits
    a = EpochBatches({'image': memory.images, 'label': memory.labels['label']}, 64, seed=3)
    b = EpochBatches({'image': streamed.images, 'label': streamed.labels['label']}, 64, seed=3)
    steps = 2 * a.steps_per_epoch + 3  # across two epoch boundaries
    inline, ahead = BatchStream(a, steps, prefetch=0), BatchStream(b, steps, prefetch=4)
    seen = set()
    for step in range(steps):
        x, y = inline.next(step), ahead.next(step)
        np.testing.assert_array_equal(x['image'], y['image'])
        np.testing.assert_array_equal(x['label'], y['label'])
        seen.add(x['image'][:, 8, 8].tobytes())
    assert len(seen) == steps  # the batches do change from step to step
    assert ahead.position == steps
    # One process's share of a batch is those rows of the whole batch.
    np.testing.assert_array_equal(b.batch(5, slice(16, 32))['image'], a.batch(5)['image'][16:32])


def test_a_restored_stream_continues_where_the_saved_one_stopped(digits):
    _, streamed = digits
    batches = EpochBatches({'image': streamed.images}, 32, seed=0)
    first = BatchStream(batches, 50)
    for step in range(17):
        first.next(step)
    saved = first.state()
    assert saved['next_index'] == 17
    second = BatchStream(batches, 50, put=lambda b: jax.tree.map(jnp.asarray, b))  # on the device, ahead
    second.restore(saved, 17)
    on_device = second.next(17)['image']
    assert isinstance(on_device, jax.Array)
    np.testing.assert_array_equal(np.asarray(on_device), batches.batch(17)['image'])
    second.close()
    with pytest.raises(ValueError, match='saved the input at step 17'):
        BatchStream(batches, 50).restore(saved, 20)
    with pytest.raises(RuntimeError, match='step 3 .* step 2'):
        seek = BatchStream(batches, 50)
        seek.restore(None, 3)
        seek.next(2)


def _toy_fit(tmp_path, images, *, stop_after=None, checkpointer=None):
    t1, v1 = toy.teacher('t1', 'cifar_resnet8', 7, {'a': (0, 5)}, seed=1)
    t2, v2 = toy.teacher('t2', 'cifar_resnet8', 7, {'a': (2, 7)}, seed=2)
    stage = toy.stage1([t1, t2])
    tx = make_optimizer(toy.stage_config(), 100)
    mesh = sharding.make_mesh(1)
    state = create_state(jax.random.key(0), stage.student.module, jnp.zeros((1, 12, 12, 3)),
                         stage.init_bridges(jax.random.key(1)), tx)
    state = sharding.put_replicated(state, mesh)
    if checkpointer is not None and checkpointer.latest_step() is not None:
        state = checkpointer.restore(state)
    step = sharding.jit_train_step(make_train_step(stage.loss, tx), mesh)
    return fit(name='toy', step=step, state=state, frozen=sharding.put_replicated({'t1': v1, 't2': v2}, mesh),
               batches=EpochBatches({'image': images}, 8, seed=0), num_steps=stop_after or 12,
               rng=jax.random.key(2), mesh=mesh, checkpointer=checkpointer, log_every=4)[0]


def test_a_streamed_stage_stopped_and_resumed_ends_as_an_uninterrupted_in_memory_one(tmp_path, monkeypatch):
    images = toy.images(32)
    monkeypatch.setattr(records, 'RECORDS_PER_SHARD', 10)  # four shards: batches read across them
    folder = records.write(str(tmp_path / 'rec'), [(images[:20], {}), (images[20:], {})], shape=images.shape[1:],
                           label_names={})
    assert len(records.read_info(folder)['shards']) == 4
    streamed = records.open_split(folder).images
    np.testing.assert_array_equal(streamed[np.array([31, 0, 10, 9, 25])], images[[31, 0, 10, 9, 25]])
    whole = _toy_fit(tmp_path, images)  # in memory, no interruption
    ckpt = Checkpointer(str(tmp_path / 'ckpt'), 3, max_to_keep=5)
    _toy_fit(tmp_path, streamed, stop_after=7, checkpointer=ckpt)  # saves at 3, 6 and (the end) 7
    ckpt.close()
    assert {'data', 'default'} <= set(os.listdir(tmp_path / 'ckpt' / '6'))
    resumed = Checkpointer(str(tmp_path / 'ckpt'), 3, max_to_keep=5)
    state = _toy_fit(tmp_path, streamed, checkpointer=resumed)
    assert resumed.restored_data == {'next_index': 7}
    resumed.close()
    for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_checkpoint_from_before_the_input_state_still_restores(tmp_path):
    state = {'w': jnp.arange(4.0)}
    old = ocp.CheckpointManager(str(tmp_path), options=ocp.CheckpointManagerOptions(create=True))
    old.save(5, args=ocp.args.StandardSave(state))
    old.wait_until_finished()
    old.close()
    ckpt = Checkpointer(str(tmp_path), 5)
    restored = ckpt.restore({'w': jnp.zeros(4)})
    np.testing.assert_array_equal(restored['w'], np.arange(4.0))
    assert ckpt.restored_data is None  # the loop then seeks the input to the state's step
    ckpt.close()


def _data(**fields):
    return toy.run_config(data=fields)


@pytest.mark.parametrize('fields, words', [
    ({'streaming': 'yes'}, r"data\.streaming must be one of 'auto', 'always', 'never'"),
    ({'memory_limit_gb': 0}, r'data\.memory_limit_gb must be > 0'),
    ({'prefetch': -2}, r'data\.prefetch must be >= -1'),
    ({'train_records': '/nonexistent/records'}, r"data\.train_records = '/nonexistent/records' cannot be used: "
                                                 r".* is not a kamal_jax records folder"),
    ({'streaming': 'always', 'views': 2, 'flip': True}, r'data\.views = 2 pre-draws views .* data\.streaming'),
])
def test_bad_input_fields_are_one_sentence_naming_the_field(fields, words):
    with pytest.raises(ConfigError, match=words):
        check_input(_data(**fields))


def test_a_streamed_split_refuses_what_needs_it_in_memory(digits, monkeypatch):
    from kamal_jax import selection
    _, streamed = digits
    monkeypatch.setattr(selection, 'SELECTORS', dict(selection.SELECTORS))
    selection.selector('stable_teacher', online=False, views=4)(selection.least_entropy)  # any selector with views
    config = toy.run_config(stage1={'selector': 'stable_teacher', 'selection': 'offline'})
    with pytest.raises(ConfigError, match=r"stage1\.selector = 'stable_teacher' draws 4 views of every training "
                                          r"image in host memory, but the training images are read from disk"):
        config_checks.check_streaming_needs(config, streamed)
    config_checks.check_streaming_needs(toy.run_config(), streamed)  # nothing else needs the split in memory


def test_auto_prefetch_threads_only_where_they_pay(digits):
    from kamal_jax.train.batches import AUTO, PREFETCH, resolve_prefetch
    memory, streamed = digits
    assert resolve_prefetch(AUTO, {'image': streamed.images}) == PREFETCH  # reads from disk overlap the step
    on_cpu = jax.default_backend() == 'cpu'
    assert resolve_prefetch(AUTO, {'image': memory.images}) == (0 if on_cpu else PREFETCH)
    assert resolve_prefetch(0, {'image': streamed.images}) == 0 and resolve_prefetch(2, {'image': memory.images}) == 2


def test_reading_written_records_needs_no_tensorflow(digits):
    import subprocess
    import sys
    _, streamed = digits
    data_dir = os.path.dirname(os.path.dirname(os.path.dirname(streamed.images.directory)))
    code = ('import sys; from kamal_jax.data import datasets; '
            f's = datasets.load("kamal_digits", "train", data_dir={data_dir!r}, image_size=(16, 16), streaming=True); '
            'x = s.images[[0, 5]]; '
            'print(len(s.images), x.shape, "tensorflow" in sys.modules, "tensorflow_datasets" in sys.modules)')
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True, cwd=root,
                         env={**os.environ, 'PYTHONPATH': root})
    assert out.stdout.split() == ['1347', '(2,', '16,', '16,', '3)', 'False', 'False']


def test_train_records_of_another_size_than_the_evaluation_are_refused_before_work(tmp_path, digits):
    memory, _ = digits
    folder = records.write(str(tmp_path / 'rec8'), [(np.zeros((64, 8, 8, 3), np.uint8), {'label': np.zeros(64, np.int64)})],
                           shape=(8, 8, 3), label_names=memory.label_names)
    config = toy.quickstart_config()
    config.data.train_records = folder
    config.data.data_dir = os.path.dirname(os.path.dirname(os.path.dirname(digits[1].images.directory)))
    with pytest.raises(ConfigError, match=r"data\.train_records holds images of \(8, 8, 3\), but data\.eval_split = "
                                          r"'test' of \(16, 16, 3\); write the records at the evaluation size"):
        pipeline.run(config, str(tmp_path / 'run'))
    assert not (tmp_path / 'run').exists()
