"""Tasks and teachers as declared in a config, validated before any work starts.

A teacher declares, per task it solves, the slice of its output logits for that task and the
task's class names. Tasks are gathered from all teachers; the user names the target tasks.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from kamal_jax import config_schema
from kamal_jax.config_schema import ConfigError  # noqa: F401 (raised here; imported from here by many)

KINDS = ('multiclass', 'binary')


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    kind: str
    classes: tuple[str, ...]
    label_key: str = 'label'

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclasses.dataclass(frozen=True)
class TeacherSpec:
    name: str
    arch: str
    checkpoint: str
    heads: Mapping[str, tuple[int, int]]  # task -> [start, stop) of the teacher's logits
    widths: tuple[int, ...] = ()
    input_size: tuple[int, ...] = ()  # () = the data's image size
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)  # the config requires both (kamal_jax.config_schema)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    ema: bool = False  # port the checkpoint's EMA weights (`model_ema`/`ema`) instead of its plain ones
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # a torch:/torchvision: factory's


@dataclasses.dataclass(frozen=True)
class Plan:
    """The validated declaration: every task, every teacher, the targets and who teaches them."""
    tasks: Mapping[str, Task]
    teachers: tuple[TeacherSpec, ...]
    target_tasks: tuple[str, ...]

    def group(self, task: str) -> tuple[TeacherSpec, ...]:
        """The teachers that declare `task`, in declaration order."""
        return tuple(t for t in self.teachers if task in t.heads)

    @property
    def used_teachers(self) -> tuple[TeacherSpec, ...]:
        return tuple(t for t in self.teachers if any(task in t.heads for task in self.target_tasks))


def _plain(mapping: Any) -> dict:
    return mapping.to_dict() if hasattr(mapping, 'to_dict') else dict(mapping)


def _pair(value: Any, field: str) -> tuple[int, int]:
    try:
        start, stop = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f'{field} must be [start, stop) of the teacher logits, got {value!r}.') from None
    if not 0 <= start < stop:
        raise ConfigError(f'{field} = {list(value)} is not a valid slice: need 0 <= start < stop.')
    return start, stop


def parse_teachers(config_teachers: Mapping[str, Any], workdir: str = '') -> tuple[
        tuple[TeacherSpec, ...], dict[str, Task]]:
    """Reads `config.teachers` into specs and the tasks they declare (checking consistency)."""
    if not config_teachers:
        raise ConfigError('teachers is empty: declare at least one teacher.')
    specs, tasks, declared_by = [], {}, {}
    for name, tc in config_teachers.items():
        prefix = f'teachers.{name}'
        heads_cfg = tc.heads
        if not heads_cfg:
            raise ConfigError(f'{prefix}.heads is empty: a teacher must declare at least one task.')
        heads = {}
        for task_name, hc in heads_cfg.items():
            field = f'{prefix}.heads.{task_name}'
            kind = hc.kind
            if kind not in KINDS:
                raise ConfigError(f'{field}.kind must be one of {KINDS}, got {kind!r}.')
            classes = tuple(str(c) for c in hc.classes)
            if len(classes) < 2 or len(set(classes)) != len(classes):
                raise ConfigError(f'{field}.classes must list at least two distinct class names, '
                                  f'got {list(classes)}.')
            if kind == 'binary' and len(classes) != 2:
                raise ConfigError(f'{field}.classes of a binary task must have two names, got {list(classes)}.')
            start, stop = _pair(hc.logits, f'{field}.logits')
            width = stop - start
            if width != len(classes) and not (kind == 'binary' and width == 1):
                raise ConfigError(f'{field}.logits spans {width} logits but the task has '
                                  f'{len(classes)} classes.')
            task = Task(task_name, kind, classes, str(hc.label_key))
            if task_name in tasks and tasks[task_name] != task:
                raise ConfigError(
                    f'{field} declares task {task_name!r} as {task.kind} {list(task.classes)} '
                    f'(label_key {task.label_key!r}), but teachers.{declared_by[task_name]} declared '
                    f'it as {tasks[task_name].kind} {list(tasks[task_name].classes)} '
                    f'(label_key {tasks[task_name].label_key!r}).')
            tasks.setdefault(task_name, task)
            declared_by.setdefault(task_name, name)
            heads[task_name] = (start, stop)
        checkpoint = str(tc.checkpoint).replace('{workdir}', workdir)
        if not checkpoint:
            raise ConfigError(f'{prefix}.checkpoint is empty.')
        specs.append(TeacherSpec(
            name=name, arch=str(tc.arch), checkpoint=checkpoint,
            heads=heads, widths=tuple(int(w) for w in tc.widths),
            input_size=tuple(int(s) for s in tc.input_size),
            mean=tuple(float(m) for m in tc.mean), std=tuple(float(s) for s in tc.std), ema=bool(tc.ema),
            kwargs=_plain(tc.kwargs)))
    return tuple(specs), tasks


def plan_from_config(config: Any, workdir: str = '') -> Plan:
    """Validates tasks, teachers and targets (of the config resolved, `kamal_jax.config_schema`);
    raises ConfigError naming the bad field."""
    config = config_schema.resolve(config)
    teachers, tasks = parse_teachers(config.teachers, workdir)
    targets = tuple(config.target_tasks)
    if not targets:
        raise ConfigError('target_tasks is empty: name the tasks the student should serve.')
    for t in targets:
        if t not in tasks:
            raise ConfigError(f'target_tasks names {t!r}, which no teacher declares; declared tasks: '
                              f'{", ".join(sorted(tasks))}.')
    if len(set(targets)) != len(targets):
        raise ConfigError(f'target_tasks lists a task twice: {list(targets)}.')
    return Plan(tasks=tasks, teachers=teachers, target_tasks=targets)


def check_logit_slices(plan: Plan, num_outputs: Mapping[str, int]) -> None:
    """Refuses a head whose logit slice runs past the teacher's classifier (known after porting)."""
    for teacher in plan.used_teachers:
        n = num_outputs[teacher.name]
        for task, (start, stop) in teacher.heads.items():
            if stop > n:
                raise ConfigError(f'teachers.{teacher.name}.heads.{task}.logits = [{start}, {stop}) '
                                  f'runs past the teacher\'s {n} output logits.')


def check_data_labels(plan: Plan, label_names: Mapping[str, Sequence[str]], split: str) -> None:
    """Every target task's classes must exist in the labelled evaluation data."""
    for name in plan.target_tasks:
        task = plan.tasks[name]
        if task.label_key not in label_names:
            raise ConfigError(f'task {name!r} reads label {task.label_key!r}, which split {split!r} '
                              f'does not have; it has {sorted(label_names)}.')
        missing = [c for c in task.classes if c not in label_names[task.label_key]]
        if missing:
            raise ConfigError(f'task {name!r} names classes {missing} that label '
                              f'{task.label_key!r} of split {split!r} does not have.')
