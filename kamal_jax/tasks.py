"""Tasks and teachers as declared in a config, validated before any work starts.

A teacher declares, per task it solves, the slice of its output logits for that task and the
task's class names (`heads`), and/or the class name of each of its logits (`classes`). A task is
declared by a teacher's head, or picked by class names (`tasks`: any classes some teacher knows);
the user names the target tasks. A teacher *serves* a task it shares at least one class with
(`Plan.members`); it *teaches* it in the per-teacher recipes only when it knows all the task's
classes in one slice of its logits, in the task's order (`Plan.group`).
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
    classes: tuple[str, ...] = ()  # the class name of each output logit, in order (() = only its heads)
    class_map: Mapping[str, str] = dataclasses.field(default_factory=dict)  # its class -> the name tasks use


@dataclasses.dataclass(frozen=True)
class Member:
    """One softmax of a teacher as it serves one task: the (mapped) class names it knows, and for
    each the logit columns whose probabilities sum to it (several when `class_map` merges them).
    Its probabilities over `names` are the unified distribution restricted to them, renormalised."""
    teacher: str
    names: tuple[str, ...]
    columns: tuple[tuple[int, ...], ...]
    head: str = ''  # the task of the head it is ('' when the teacher lists `classes`)


@dataclasses.dataclass(frozen=True)
class Plan:
    """The validated declaration: every task, every teacher, the targets and who teaches them."""
    tasks: Mapping[str, Task]
    teachers: tuple[TeacherSpec, ...]
    target_tasks: tuple[str, ...]
    picked: tuple[str, ...] = ()  # the tasks picked by class names (`tasks`)

    def members(self, task: str) -> tuple[Member, ...]:
        """The teacher softmaxes that serve `task`, in declaration order: of a picked task, every one
        that knows at least one of its classes; of a task a head declares, those heads and the
        softmaxes of teachers listing `classes` that know one (a config without either is as before)."""
        wanted = set(self.tasks[task].classes)
        return tuple(m for t in self.teachers for m in softmaxes(t, self.tasks)
                     if wanted & set(m.names) and (task in self.picked or t.classes or m.head == task))

    def group(self, task: str) -> tuple[TeacherSpec, ...]:
        """The teachers that declare `task`, in declaration order."""
        return tuple(t for t in self.teachers if task in t.heads)

    @property
    def used_teachers(self) -> tuple[TeacherSpec, ...]:
        serving = {m.teacher for task in self.target_tasks for m in self.members(task)}
        return tuple(t for t in self.teachers if t.name in serving
                     or any(task in t.heads for task in self.target_tasks))


def softmaxes(teacher: TeacherSpec, tasks: Mapping[str, Task]) -> tuple[Member, ...]:
    """The teacher's softmaxes by class name: all its logits when it lists `classes`, else each
    multiclass head; names renamed by `class_map`, columns that map to one name merged."""
    if teacher.classes:
        parts = [('', tuple(range(len(teacher.classes))), teacher.classes)]
    else:
        parts = [(t, tuple(range(a, b)), tasks[t].classes) for t, (a, b) in teacher.heads.items()
                 if tasks[t].kind == 'multiclass']
    out = []
    for head, columns, names in parts:
        merged: dict[str, list[int]] = {}
        for column, name in zip(columns, names):
            merged.setdefault(teacher.class_map[name] if name in teacher.class_map else name, []).append(column)
        out.append(Member(teacher.name, tuple(merged), tuple(tuple(c) for c in merged.values()), head))
    return tuple(out)


def _as_dict(mapping: Any) -> dict:
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
        classes_of_logits = _class_names(tc.classes, f'{prefix}.classes', allow_empty=True)
        if not heads_cfg and not classes_of_logits:
            raise ConfigError(f'{prefix} declares no task: give heads (a logit slice per task) or classes '
                              f'(the class name of each logit).')
        heads = {}
        for task_name, hc in heads_cfg.items():
            field = f'{prefix}.heads.{task_name}'
            kind = hc.kind
            if kind not in KINDS:
                raise ConfigError(f'{field}.kind must be one of {KINDS}, got {kind!r}.')
            classes = _class_names(hc.classes, f'{field}.classes')
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
            kwargs=_as_dict(tc.kwargs), classes=classes_of_logits,
            class_map=_class_map(tc.class_map, classes_of_logits, heads, tasks, prefix)))
    return tuple(specs), tasks


def _class_names(value: Any, field: str, *, allow_empty: bool = False) -> tuple[str, ...]:
    names = tuple(str(c) for c in value)
    if allow_empty and not names:
        return names
    if len(names) < 2 or len(set(names)) != len(names):
        raise ConfigError(f'{field} must list at least two distinct class names, got {list(names)}.')
    return names


def _class_map(value: Any, classes: tuple[str, ...], heads: Mapping[str, tuple[int, int]],
               tasks: Mapping[str, Task], prefix: str) -> dict[str, str]:
    """`class_map` checked: it renames classes the teacher has, to non-empty names."""
    mapping = {str(k): v for k, v in _as_dict(value).items()}
    own = set(classes) | {c for t in heads for c in tasks[t].classes}
    for name, new in mapping.items():
        if name not in own:
            raise ConfigError(f'{prefix}.class_map renames {name!r}, which is not one of its classes '
                              f'({", ".join(sorted(own))}).')
        if not isinstance(new, str) or not new:
            raise ConfigError(f'{prefix}.class_map[{name!r}] must be a class name, got {new!r}.')
    return mapping


def _picked_tasks(config_tasks: Mapping[str, Any], declared: Mapping[str, Task],
                  teachers: tuple[TeacherSpec, ...]) -> dict[str, Task]:
    """`tasks`: target tasks picked by class names, each class known to some teacher."""
    out = {}
    for name, tc in config_tasks.items():
        field = f'tasks.{name}'
        if name in declared:
            raise ConfigError(f'{field} is also declared by a teacher\'s heads; give the task another name.')
        task = Task(name, 'multiclass', _class_names(tc.classes, f'{field}.classes'), str(tc.label_key))
        known = {n for t in teachers for m in softmaxes(t, declared) for n in m.names}
        unknown = [c for c in task.classes if c not in known]
        if unknown:
            raise ConfigError(f'{field}.classes names {", ".join(map(repr, unknown))}, which no teacher knows; '
                              f'the teachers know {", ".join(sorted(known))}.')
        out[name] = task
    return out


def _join_whole_slices(teachers: tuple[TeacherSpec, ...], tasks: Mapping[str, Task]) -> tuple[TeacherSpec, ...]:
    """A teacher listing `classes` teaches a picked task in every recipe when the task's classes are
    one slice of its logits, in order and unmerged: that slice becomes its head for the task."""
    out = []
    for t in teachers:
        heads = dict(t.heads)
        names = tuple(t.class_map[c] if c in t.class_map else c for c in t.classes)
        if len(set(names)) == len(names):
            for name, task in tasks.items():
                n = len(task.classes)
                starts = [i for i in range(len(names) - n + 1) if names[i:i + n] == task.classes]
                if starts and name not in heads:
                    heads[name] = (starts[0], starts[0] + n)
        out.append(dataclasses.replace(t, heads=heads))
    return tuple(out)


def plan_from_config(config: Any, workdir: str = '') -> Plan:
    """Validates tasks, teachers and targets (of the config resolved, `kamal_jax.config_schema`);
    raises ConfigError naming the bad field."""
    config = config_schema.resolve(config)
    teachers, tasks = parse_teachers(config.teachers, workdir)
    picked = _picked_tasks(config.tasks, tasks, teachers)
    teachers, tasks = _join_whole_slices(teachers, picked), {**tasks, **picked}
    targets = tuple(config.target_tasks)
    if not targets:
        raise ConfigError('target_tasks is empty: name the tasks the student should serve.')
    for t in targets:
        if t not in tasks:
            raise ConfigError(f'target_tasks names {t!r}, which neither a teacher\'s heads nor tasks declares; '
                              f'declared tasks: {", ".join(sorted(tasks))}.')
    if len(set(targets)) != len(targets):
        raise ConfigError(f'target_tasks lists a task twice: {list(targets)}.')
    return Plan(tasks=tasks, teachers=teachers, target_tasks=targets, picked=tuple(picked))


def check_logit_slices(plan: Plan, num_outputs: Mapping[str, int]) -> None:
    """Refuses a head whose logit slice runs past the teacher's classifier (known after porting)."""
    for teacher in plan.used_teachers:
        n = num_outputs[teacher.name]
        if teacher.classes and len(teacher.classes) != n:
            raise ConfigError(f'teachers.{teacher.name}.classes names {len(teacher.classes)} classes, but the '
                              f'teacher has {n} output logits.')
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
