"""Whether a one-stage run reads its teachers' logits from a cache or runs the teachers live.

A recipe that needs only the teachers' task logits (`product`, `average`, the label models) can
compute them once per pre-drawn view of each training image and read them at every step. That
trades the teachers' forward pass at every step of every epoch (`E x N` images) for one pass over
`K x N` images, and the student then sees K fixed views per image instead of a fresh one per
epoch. `decide` weighs that from what is known before training; `on` and `off` force it.

The estimate counts floating-point operations: a training step costs about three forward passes
of the student (forward, and backward at about twice that), plus one forward pass of every
teacher when they run live:

    live   = E x (3 S + T)          cached = K x T + E x 3 S          gain = live / cached

for S the student's and T all teachers' forward FLOPs per image, E epochs and K views. `auto`
caches when the gain reaches `MIN_GAIN[device]`: on a CPU a step's time follows its FLOPs
closely; on accelerators small nets are bound by memory traffic and launch latency as much as by
FLOPs, so the cache must promise more before it is worth fixing the views.

The views, K: 1 when training does not augment (every epoch shows the same image anyway);
`data.views` when the user set it; else `AUTO_VIEWS`, the number measured to recover on the
quickstart the accuracy that one fixed view lost, or the number of epochs when there are fewer
(a view an epoch never shows costs a teachers' pass and teaches nothing). K is never lowered to
reach a speed: the FLOPs it saves are the accuracy the fixed views lose.
"""

from __future__ import annotations

import dataclasses

SETTINGS = ('auto', 'on', 'off')
AUTO_VIEWS = 4
MIN_GAIN = {'cpu': 1.25, 'gpu': 1.5, 'tpu': 1.5}
STUDENT_STEP_PASSES = 3  # forward + backward, in forward passes


@dataclasses.dataclass(frozen=True)
class Decision:
    """What `decide` chose and why; `line` is what the run logs."""
    cached: bool
    views: int          # pre-drawn views per image the cache holds (0 when not cached)
    setting: str
    why: str
    gain: float = 0.0   # estimated FLOPs of the live run over the cached one
    cache_bytes: int = 0

    def line(self) -> str:
        state = f'on, {self.views} view{"s" if self.views != 1 else ""} per image' if self.cached else 'off'
        return f"teacher logits cache: {state} ({self.setting}): {self.why}"


def views_for(*, augmented: bool, views: int, epochs: int) -> int:
    """K: see the module docstring."""
    if not augmented:
        return 1
    return views if views > 0 else max(1, min(AUTO_VIEWS, epochs))


def flops_gain(*, teacher_flops: float, student_flops: float, epochs: int, views: int) -> float:
    """The live run's FLOPs over the cached run's (the module docstring's formula)."""
    step = STUDENT_STEP_PASSES * student_flops
    return epochs * (step + teacher_flops) / (views * teacher_flops + epochs * step)


def _device(kind: str) -> str:
    kind = kind.lower()
    return 'cpu' if kind == 'cpu' else 'tpu' if 'tpu' in kind else 'gpu'


def decide(setting: str, *, teacher_flops: float, student_flops: float, epochs: int, augmented: bool,
           views: int, bytes_per_view: int, limit_bytes: int, device_kind: str,
           image_bytes_per_view: int = 0, image_limit_bytes: int = 0, needs_live: str = '') -> Decision:
    """Cache or not, and with how many views (see the module docstring).

    `bytes_per_view`: the cache's size for one view of every training image (`limit_bytes` its
    limit); `image_bytes_per_view`: the memory one pre-drawn view of every image takes, when the
    cache needs the views drawn (`image_limit_bytes` their limit); `needs_live`: why the recipe
    cannot use the cache ('' when it can). Raises ValueError when `on` cannot be honoured.
    """
    if setting not in SETTINGS:
        raise ValueError(f'the logits cache setting must be one of {SETTINGS}, got {setting!r}.')
    if setting == 'off':
        return Decision(False, 0, setting, 'the teachers run at every step')
    if needs_live:
        if setting == 'on':
            raise ValueError(f'the logits cache is set on, but {needs_live}.')
        return Decision(False, 0, setting, needs_live)
    k = views_for(augmented=augmented, views=views, epochs=epochs)
    nbytes = k * bytes_per_view
    images = k * image_bytes_per_view if k > 1 else 0
    if images > image_limit_bytes:
        why = (f'{k} pre-drawn views would hold {images / 2 ** 30:.2f} GiB of images in memory, more than '
               f'{image_limit_bytes / 2 ** 30:g} GiB')
        if setting == 'on':
            raise ValueError(f'the logits cache is set on, but {why}.')
        return Decision(False, 0, setting, f'{why}; the teachers run at every step')
    gain = flops_gain(teacher_flops=teacher_flops, student_flops=student_flops, epochs=epochs, views=k)
    size = f'{nbytes / 2 ** 20:.1f} MiB of a {limit_bytes / 2 ** 30:g} GiB limit'
    if nbytes > limit_bytes:
        if setting == 'on':
            raise ValueError(f'the logits cache is set on, but {k} views would take {nbytes / 2 ** 30:.2f} GiB, '
                             f'more than its limit of {limit_bytes / 2 ** 30:g} GiB.')
        return Decision(False, 0, setting, f'{k} views would take {size}; the teachers run at every step',
                        gain, nbytes)
    estimate = (f'teachers {teacher_flops / 1e6:.0f} MFLOPs/image against the student\'s '
                f'{STUDENT_STEP_PASSES * student_flops / 1e6:.0f} per step, {epochs} epochs over {k} '
                f'view{"s" if k != 1 else ""}: {gain:.2f}x fewer FLOPs cached; {size}')
    if setting == 'on':
        return Decision(True, k, setting, estimate, gain, nbytes)
    need = MIN_GAIN[_device(device_kind)]
    if gain >= need:
        return Decision(True, k, setting, f'{estimate} (caches from {need:g}x on {_device(device_kind)})', gain,
                        nbytes)
    return Decision(False, 0, setting, f'{estimate}, under the {need:g}x that pays on {_device(device_kind)}',
                    gain, nbytes)
