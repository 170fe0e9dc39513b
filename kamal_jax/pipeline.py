"""The whole run: config -> teachers -> recipes (the main one, then any baselines) -> summary, export.

Data flows one way; every check on the config happens before the first training step
(`config_checks`), and a rerun with the same workdir resumes each recipe from its last checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from typing import Any, Callable

import jax
import numpy as np

from kamal_jax import config_schema, diagnostics, export, own_images, porting, summary as summary_lib
from kamal_jax import workdir as workdir_lib
from kamal_jax.config_checks import check_data, folder_fields, validate
from kamal_jax.layout import Layout
from kamal_jax.recipes import RETUNABLE_SECTIONS, Outcome, Run, Scored, run_recipe
from kamal_jax.recipes.context import fmt
from kamal_jax.tasks import ConfigError, Plan, check_data_labels, check_logit_slices
from kamal_jax.teachers import load_teacher
from kamal_jax.train import distributed, evaluate as eval_lib, sharding, views as views_lib
from kamal_jax.train.loop import NonFiniteLoss
from kamal_jax.train.nets import Net
from kamal_jax.train.state import count_params

log = logging.getLogger('kamal_jax')


# ----------------------------------------------------------------------------- data and teachers

def _streams(config: Any, split: str) -> bool:
    """Whether `split` is read from records on disk (`data.streaming`; 'auto': when its decoded
    pixels exceed `data.memory_limit_gb`) rather than held in host memory."""
    from kamal_jax.data import datasets
    d = config.data
    if d.streaming != 'auto':
        return d.streaming == 'always'
    nbytes = datasets.split_bytes(d.name, split, data_dir=d.data_dir or None, manual_dir=d.manual_dir or None,
                                  image_size=tuple(d.image_size) or None)
    return nbytes is not None and nbytes > d.memory_limit_gb * 2 ** 30


def load_split(config: Any, split: str):
    from kamal_jax.data import datasets, records  # TensorFlow is imported only when data is read.
    d = config.data
    training = split == d.train_split
    field = 'data.train_split' if training else 'data.eval_split'
    if training and d.train_records:
        field = 'data.train_records'
        ds = records.open_split(os.path.expanduser(d.train_records))
        log.info('training images: %d of %s from the records in %s, read from disk as needed', len(ds.images),
                 ds.images.shape[1:], d.train_records)
    else:
        try:
            streaming = _streams(config, split)
            kwargs = dict(data_dir=d.data_dir or None, manual_dir=d.manual_dir or None,
                          image_size=tuple(d.image_size) or None, streaming=streaming)
            if streaming:  # process 0 writes the records; the others read them
                ds = distributed.primary_first(lambda: datasets.load(d.name, split, **kwargs),
                                               f'writing the records of {field} = {split!r}')
            else:  # in memory: every process reads its copy at once, as before
                ds = datasets.load(d.name, split, **kwargs)
        except (ValueError, AssertionError) as e:  # TFDS reports bad split specs this way
            raise ConfigError(f'{field} = {split!r} of dataset {d.name!r} cannot be read: {e}') from None
        if streaming:
            log.info('%s = %r: %d images of %s (%.1f GiB decoded) streamed from the records in %s', field, split,
                     len(ds.images), ds.images.shape[1:], ds.images.nbytes / 2 ** 30, ds.images.directory)
    ds = _limited(config, ds, training, field, split)
    if len(ds.images) == 0:
        raise ConfigError(f'{field} = {split!r} of dataset {d.name!r} is empty.')
    return ds


def _limited_rows(config: Any, count: int, training: bool, field: str, source: str):
    """The seeded rows `data.train_limit` / `data.eval_limit` keep of `count` (None: all)."""
    limit_field = 'train_limit' if training else 'eval_limit'
    limit = config.data[limit_field]
    if limit > count:
        log.warning('data.%s = %d is above the %d images of %s = %r; using all %d.', limit_field, limit,
                    count, field, source, count)
    if limit and limit < count:
        return np.sort(np.random.default_rng(config.seed).permutation(count)[:limit])
    return None


def _limited(config: Any, ds, training: bool, field: str, source: str):
    from kamal_jax.data import records
    rows = _limited_rows(config, len(ds.images), training, field, source)
    return ds if rows is None else records.take(ds, rows)


def _limited_folder(config: Any, part, training: bool):
    from kamal_jax.data import records
    rows = _limited_rows(config, len(part.split.images), training, part.field, part.root)
    if rows is None:
        return part
    return part._replace(split=records.take(part.split, rows), paths=[part.paths[i] for i in rows])


def load_data(config: Any, plan: Plan):
    """(training split, held-out split, folder notes): from TFDS (`data.train_split`, `data.eval_split`)
    or your own folders (`data.train_folder`, `data.eval_folder`; without the latter a seeded
    `data.holdout_fraction` of the training folder is held out, unlabelled)."""
    fields = folder_fields(config.data)
    parts, held_part, warnings, primary_first = [], None, [], distributed.primary_first
    if fields.train_folder:
        train_part = own_images.load_folder(config, fields, 'data.train_folder', labelled=False, load=primary_first)
        parts.append(train_part)
        if not fields.eval_folder:
            train_part, held_part = own_images.hold_out(train_part, fields.holdout_fraction, config.seed)
            held_part = _limited_folder(config, held_part, False)
        train = _limited_folder(config, train_part, True).split
    else:
        train = load_split(config, config.data.train_split)
    if fields.eval_folder:
        eval_part = _limited_folder(config, own_images.load_folder(config, fields, 'data.eval_folder', labelled=True,
                                                                   load=primary_first), False)
        parts.append(eval_part)
        held_out = eval_part.split
        warnings.append(own_images.check_eval_classes(plan, held_out, eval_part.root))
    elif held_part is not None:
        held_out = held_part.split
        log.info('no labelled images (data.eval_folder): %d of data.train_folder\'s images are held out '
                 '(data.holdout_fraction = %s) and scored by label-free diagnostics', len(held_out.images),
                 fields.holdout_fraction)
    else:
        held_out = load_split(config, config.data.eval_split)
        check_data_labels(plan, held_out.label_names, config.data.eval_split)
    return train, held_out, own_images.Notes(parts, held_part, [w for w in warnings if w])


def ensure_zoo_teachers(config: Any, plan: Plan, workdir: str) -> None:
    """Trains the teachers a config makes itself (config.zoo), in a separate PyTorch process."""
    missing = [t for t in plan.used_teachers if not os.path.isfile(t.checkpoint)]
    zoo = config.zoo
    if not missing or not zoo:
        return
    layout = Layout(workdir)
    out, spec = layout.zoo, layout.zoo_config
    os.makedirs(out, exist_ok=True)
    with open(spec, 'w') as f:
        json.dump({'data': config.data.to_dict(), 'seed': config.seed, **zoo.to_dict()}, f, indent=2)
    log.info('training %d teacher(s) in PyTorch: %s', len(missing), ', '.join(t.name for t in missing))
    result = subprocess.run([sys.executable, '-m', 'kamal_jax.zoo', '--config_json', spec, '--out', out])
    if result.returncode:
        raise RuntimeError(f'teacher training failed (exit {result.returncode}); see the output above.')


# ----------------------------------------------------------------------------- export

def export_net(directory: str, net: Net, variables: Any, plan: Plan, image_size) -> str:
    """Writes a trained multi-head net where `kamal_jax.load_student` reads it (call on process 0)."""
    return export.save_student(directory, arch=net.arch, widths=net.widths, heads=net.module.heads,
                               variables=sharding.to_host(variables), tasks=plan.tasks, mean=net.mean,
                               std=net.std, image_size=image_size)


# ----------------------------------------------------------------------------- the run

def _log_to_file(workdir: str) -> None:
    path = Layout(workdir).log
    if not any(getattr(h, 'baseFilename', None) == path for h in log.handlers):
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter('%(asctime)s %(message)s'))
        log.addHandler(handler)
    log.setLevel(logging.INFO)


_LOCKS: dict[str, Any] = {}  # workdir -> the lock this process holds on it (from the claim to the run's end)


def _check_unlocked(workdir: str) -> None:
    """A workdir another run holds is refused before this one loads any data (process 0 looks)."""
    if os.path.abspath(workdir) not in _LOCKS:
        distributed.primary_first(lambda: workdir_lib.check_unlocked(workdir) if distributed.is_primary() else None,
                                  'checking the workdir lock')


def _claim(config: Any, workdir: str, overwrite: bool) -> bool:
    """Locks and claims the workdir for this config; True when resuming. Process 0 alone locks
    and writes it: the processes of one multi-host run are one run."""
    distributed.check_same_config(config.to_dict(), workdir_lib.first_difference)  # the same config on each process

    def claim() -> bool:
        if not distributed.is_primary():
            return os.path.isfile(Layout(workdir).config)
        if os.path.abspath(workdir) in _LOCKS:  # this process holds it already (prepare, then run)
            return workdir_lib.prepare(workdir, config.to_dict(), overwrite=overwrite)
        resumed, _LOCKS[os.path.abspath(workdir)] = workdir_lib.claim(workdir, config.to_dict(),
                                                                      overwrite=overwrite)
        return resumed
    resumed = distributed.primary_first(claim, 'claiming the workdir')
    if distributed.is_primary():
        _log_to_file(workdir)
    return resumed


def release(workdir: str) -> None:
    """Releases this process's lock on `workdir` (`run` does so as it ends, however it ends)."""
    lock = _LOCKS.pop(os.path.abspath(workdir), None)
    if lock is not None:
        lock.release()


def load_teachers(config: Any, plan: Plan, workdir: str, image_size, mesh):
    """The used teachers ported (or read from the workdir's cache), their variables replicated."""
    def load():  # process 0 ports and caches them, the others then read the cache
        return {spec.name: load_teacher(spec, Layout(workdir).teachers, image_size)
                for spec in plan.used_teachers}
    loaded = distributed.primary_first(load, 'loading the teachers')
    teachers = {name: net for name, (net, _) in loaded.items()}
    check_logit_slices(plan, {n: t.module.num_classes for n, t in teachers.items()})
    return teachers, sharding.put_replicated({name: v for name, (_, v) in loaded.items()}, mesh)


def _teacher_entries(run: Run) -> tuple[dict, dict]:
    """Each teacher scored on the held-out split, on the target tasks it declares; and its task
    logits there (the label-free diagnostics compare the students with them)."""
    entries, logits = {}, {}
    for name, net in run.teachers.items():
        tasks = {t: run.plan.tasks[t] for t in net.heads if t in run.plan.target_tasks}
        logits[name] = eval_lib.predict(net, run.frozen[name], run.held_out.images, run.config.eval_batch_size)
        acc = eval_lib.accuracy(logits[name], run.held_out, tasks)
        entries[name] = summary_lib.model_entry('teacher', net.arch, count_params(run.frozen[name]['params']),
                                                tasks, acc, flops=eval_lib.forward_flops(
                                                    net, run.frozen[name], run.held_out.images.shape[1:]))
        log.info('teacher %s (%s): %s', name, net.arch, fmt(acc) or 'not scored (no labelled held-out images)')
    return entries, logits


def diagnose(run: Run, net: Net, variables: Any, teacher_logits: dict) -> dict:
    """Per target task the net has a head for: its label-free diagnostics against the task's
    teachers on the held-out images (`kamal_jax.diagnostics`)."""
    logits = eval_lib.predict(net, variables, run.held_out.images, run.config.eval_batch_size)
    out = {}
    for task in run.plan.target_tasks:
        teachers = {t.name: diagnostics.probabilities(teacher_logits[t.name][task]) for t in run.plan.group(task)
                    if t.name in teacher_logits and task in teacher_logits[t.name]}
        if task in logits and teachers:
            out[task] = diagnostics.task_diagnostics(diagnostics.probabilities(logits[task]), teachers)
    return out


def _write_diagnostics_scalars(workdir: str, entries: dict) -> None:
    """The diagnostics as TensorBoard scalars (step 0) under WORKDIR/tb/diagnostics."""
    from kamal_jax.train.metrics import Writers
    scalars = summary_lib.diagnostics_scalars(entries)
    if scalars:
        writers = Writers(Layout(workdir).diagnostics_tb)
        writers.write_scalars(0, scalars)
        writers.close()


def _check_teacher_files(config: Any, plan: Plan, workdir: str, image_size) -> None:
    """Every checkpoint the zoo will not train exists, reads, and has the logits its heads slice."""
    zoo, layout = config.zoo, Layout(workdir)
    for spec in plan.used_teachers:
        field = f'teachers.{spec.name}.checkpoint'
        if not os.path.isfile(spec.checkpoint):
            if zoo and spec.name in zoo.teachers and os.path.abspath(spec.checkpoint) == layout.zoo_checkpoint(
                    spec.name):
                continue  # the zoo trains it first
            where = (f'; the zoo writes teacher {spec.name!r} to {layout.zoo_checkpoint(spec.name)!r}'
                     if zoo and spec.name in zoo.teachers else '')
            raise ConfigError(f'{field} = {spec.checkpoint!r} does not exist{where}.')
        if spec.arch.startswith(('torch:', 'torchvision:')):
            width = _check_generic_teacher(spec, field, tuple(spec.input_size or image_size))
            check_logit_slices(Plan(plan.tasks, (spec,), plan.target_tasks), {spec.name: width})
            continue
        try:
            state_dict = porting.load_state_dict(spec.checkpoint, spec.ema)
            width = porting.resolve(spec.arch, state_dict, spec.widths or None).num_classes
        except (OSError, ValueError) as e:
            raise ConfigError(f'{field} = {spec.checkpoint!r} cannot be used: {e}') from None
        check_logit_slices(Plan(plan.tasks, (spec,), plan.target_tasks), {spec.name: width})


def _check_generic_teacher(spec, field: str, size) -> int:
    """A `torch:`/`torchvision:` teacher builds, loads its state_dict strictly and runs one image of
    `size` (its own PyTorch process); returns its output width."""
    from kamal_jax.porting import generic
    try:
        return generic.output_width(generic.check(spec.arch, spec.checkpoint, spec.kwargs, spec.ema, size))
    except (generic.ExportError, OSError, ValueError) as e:
        raise ConfigError(f'{field} = {spec.checkpoint!r} cannot be used with arch {spec.arch!r}: '
                          f'{" ".join(str(e).split())}') from None


def resolve(config: Any, workdir: str) -> config_schema.Resolved:
    """The config resolved at the door (`kamal_jax.config_schema`): defaults merged, old fields
    migrated, types checked; a relaunch on a workdir stored by an earlier version keeps what that
    run behaved as where the config leaves a later field at its default."""
    resolved = config_schema.resolve(config, warn=log.warning)
    return config_schema.adopt_stored(resolved, workdir_lib.read_stored(workdir))


def prepare(config: Any, workdir: str, *, overwrite: bool = False) -> Run:
    """Resolves the config, validates everything it can (config, workdir, data, batch sizes,
    checkpoint files), then claims the workdir, trains the zoo and ports the teachers."""
    config = resolve(config, workdir)
    plan = validate(config, workdir)
    workdir_lib.check_writable(workdir)
    _check_unlocked(workdir)  # a second run on a workdir is refused before it reads any data
    train, held_out, notes = load_data(config, plan)  # data problems stop us before the workdir is claimed
    mesh = sharding.make_mesh(config.num_devices)
    check_data(config, plan, train, held_out, mesh.size)
    _check_teacher_files(config, plan, workdir, tuple(train.images.shape[1:3]))
    resumed = _claim(config, workdir, overwrite)
    if distributed.is_primary():
        own_images.write_notes(workdir, notes)
    log.info('%s run in %s; target tasks: %s', 'resuming' if resumed else 'starting', workdir,
             ', '.join(plan.target_tasks))
    image_size = tuple(train.images.shape[1:3])
    distributed.primary_first(lambda: ensure_zoo_teachers(config, plan, workdir)
                              if distributed.is_primary() else None, 'training the zoo teachers')
    log.info('mesh: %d device(s) (%s); %d training images of %s, %d held out', mesh.size,
             jax.devices()[0].platform, len(train.images), train.images.shape[1:], len(held_out.images))
    n_views = views_lib.count(config.data)
    if n_views:
        t0 = time.perf_counter()
        train = views_lib.expand_split(train, config.data, config.seed)
        log.info('pre-drew %d augmented views of each training image (%.1f MiB in memory, %.1fs)', n_views,
                 train.images.nbytes / 2 ** 20, time.perf_counter() - t0)
    teachers, frozen = load_teachers(config, plan, workdir, image_size, mesh)
    return Run(config, plan, teachers, frozen, train, held_out, mesh, workdir)


def summary_entry(run: Run, scored: Scored) -> dict:
    """A trained net's summary entry: what its recipe scored, with its size and cost per image."""
    return summary_lib.model_entry(scored.role, scored.net.arch, count_params(scored.variables['params']),
                                   scored.tasks, scored.accuracy, flops=eval_lib.forward_flops(
                                       scored.net, scored.variables, run.held_out.images.shape[1:]),
                                   **scored.extra)


def run_recipes(run: Run, names, *, main: str | None = None,
                on_result: Callable[[str, Outcome], None] | None = None) -> tuple[dict, dict]:
    """Trains (or resumes) each recipe of `names` in turn and exports its net; returns the summary
    entries and wall seconds of all. `main` names the run's own recipe (the others are baselines);
    `on_result(name, outcome)` is called as each one finishes."""
    entries, wall = {}, {}
    image_size = tuple(run.train.images.shape[1:3])
    for name in names:
        is_main = name == main
        outcome = run_recipe(name, run, is_main)
        outcome = outcome._replace(entries={k: summary_entry(run, s) for k, s in outcome.entries.items()})
        if distributed.is_primary():
            export_net(run.layout.export(name, is_main), outcome.net,
                       outcome.variables, run.plan, image_size)
        key = 'target' if is_main else f'baseline_{name}'
        if outcome.entries[key]['accuracy']:  # without labels, the diagnostics' line follows (on_result)
            log.info('%s: %s', 'target' if is_main else f'baseline {name}', fmt(outcome.entries[key]['accuracy']))
        entries.update(outcome.entries)
        wall.update(outcome.wall)
        if on_result is not None:
            on_result(name, outcome)
    return entries, wall


def _write_plots(workdir: str) -> None:
    """The run's plots (`kamal_jax.plots`); a failure to draw them never fails the run."""
    try:
        from kamal_jax import plots
        log.info('plots: %s', plots.write_plots(workdir))
    except Exception as e:  # noqa: BLE001 (no matplotlib, an unreadable metrics file, ...)
        log.warning('the plots were not written (%s: %s); run python -m kamal_jax.plots %s',
                    type(e).__name__, e, workdir)


def run(config: Any, workdir: str, *, overwrite: bool = False) -> dict:
    """Runs the main recipe, then the baselines; returns the summary (also WORKDIR/summary.{json,md}).

    The summary is first written when the main recipe ends and rewritten as each baseline finishes,
    so a long run shows its main result before its baselines.
    """
    workdir = os.path.abspath(workdir)
    try:
        return _run(config, workdir, overwrite)
    finally:
        release(workdir)


def _run(config: Any, workdir: str, overwrite: bool) -> dict:
    r = prepare(config, workdir, overwrite=overwrite)
    config = r.config
    previous = summary_lib.read(workdir)  # what a finished net resuming in this launch keeps
    main, baselines = config.recipe, tuple(config.baselines)
    teacher_entries, teacher_logits = _teacher_entries(r)
    entries, wall, pending = teacher_entries, {}, list(baselines)
    fields = folder_fields(config.data)
    data_info = {'name': fields.train_folder or config.data.name,
                 'train': len(r.train.images) // max(views_lib.count(config.data), 1),
                 'eval': len(r.held_out.images), 'labelled_eval': bool(r.held_out.labels)}

    def publish() -> tuple[str, dict]:
        extra = {'pending_baselines': list(pending)} if pending else {}
        result = summary_lib.build(r.plan.tasks, r.plan.target_tasks, entries, wall, data=data_info, **extra)
        return (summary_lib.write(workdir, result) if distributed.is_primary() else ''), result

    def on_result(name: str, outcome: Outcome) -> None:
        key = 'target' if name == main else f'baseline_{name}'
        if key in outcome.entries:
            outcome.entries[key]['diagnostics'] = diagnose(r, outcome.net, outcome.variables, teacher_logits)
            if not outcome.entries[key]['accuracy']:
                log.info('%s: %s', 'target' if name == main else f'baseline {name}',
                         diagnostics.line(outcome.entries[key]['diagnostics']))
        kept_entries, kept_wall = summary_lib.keep_finished(previous, outcome.entries, outcome.wall)
        entries.update(kept_entries)
        wall.update(kept_wall)
        if name in pending:
            pending.remove(name)
        if pending or name != main:
            publish()
        if name == main and pending:
            log.info('summary so far in %s; baselines to train: %s', Layout(workdir).summary_md,
                     ', '.join(pending))

    try:
        run_recipes(r, (main, *baselines), main=main, on_result=on_result)
    except NonFiniteLoss as e:
        sections = RETUNABLE_SECTIONS[e.stage]
        if distributed.is_primary():
            workdir_lib.record_stop(workdir, e.name, e.step, sections)
        raise NonFiniteLoss(e.name, e.step, e.term, e.value, e.last_good,
                            hint=f'relaunch with a lower {sections[0]}.lr (or {sections[0]}.bridge_lr, or its '
                                 'loss weights) to resume from it', stage=e.stage, task=e.task) from None
    table, result = publish()
    if distributed.is_primary():
        _write_diagnostics_scalars(workdir, entries)
        log.info('summary (also in %s):\n%s', Layout(workdir).summary_md, table)
        _write_plots(workdir)
    distributed.barrier('kamal_jax_run_done')
    return result
