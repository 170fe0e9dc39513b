"""Feature taps: the named block outputs a backbone exposes, and how two backbones' taps pair up."""

from __future__ import annotations

import dataclasses
from typing import Sequence


@dataclasses.dataclass(frozen=True)
class Tap:
    """A named feature map: channel count and stride relative to the input."""
    name: str
    channels: int
    stride: int


def pair_by_depth(teacher: Sequence[Tap], student: Sequence[Tap],
                  override: Sequence[Sequence[str]] | None = None) -> tuple[tuple[Tap, Tap], ...]:
    """Pairs (teacher_tap, student_tap) by relative depth, one pair per tap of the shorter list.

    Tap i of n sits at depth (i + 1) / n; each tap of the shorter list takes the tap of the
    longer list nearest in depth. `override` is a list of [teacher_name, student_name].
    """
    by_name_t = {t.name: t for t in teacher}
    by_name_s = {s.name: s for s in student}
    if override:
        pairs = []
        for names in override:
            if len(names) != 2:
                raise ValueError(f'each tap pair must be [teacher_tap, student_tap], got {list(names)}.')
            t_name, s_name = names
            if t_name not in by_name_t:
                raise ValueError(f'teacher tap {t_name!r} does not exist; taps are {sorted(by_name_t)}.')
            if s_name not in by_name_s:
                raise ValueError(f'student tap {s_name!r} does not exist; taps are {sorted(by_name_s)}.')
            pairs.append((by_name_t[t_name], by_name_s[s_name]))
        return tuple(pairs)
    short, long_ = (teacher, student) if len(teacher) <= len(student) else (student, teacher)
    chosen = []
    for i in range(len(short)):
        depth = (i + 1) / len(short)
        j = min(range(len(long_)), key=lambda k: (abs((k + 1) / len(long_) - depth), -k))
        chosen.append((short[i], long_[j]))
    if short is teacher:
        return tuple(chosen)
    return tuple((t, s) for s, t in chosen)
