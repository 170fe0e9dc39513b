"""Step throughput: the paper's setting at 128 px (two ResNet-18 teachers, ResNet-18 component,
target widths 72/72/144/288/576 with two heads), batch 32, random weights and images.

    python -m kamal_jax.benchmarks.steps --config configs/bench_steps.py

Reports images/s of the stage-1, stage-2 and plain supervised steps after warm-up, compile time
apart. `configs/bench_steps.py:cifar` is CIFAR scale (32 px, batch 128, CIFAR ResNet-20 teachers,
component and target of widths 18/18/36/72, as in the first `configs/bench_cifar10_parts.py` runs);
`configs/bench_steps.py:tiny` runs a 32 px smoke version.
"""

import ml_collections


def get_config(arg: str = ''):
    if arg not in ('', 'cifar', 'tiny'):
        raise ValueError(f"configs/bench_steps.py takes no argument, 'cifar' or 'tiny', got {arg!r}.")
    c = ml_collections.ConfigDict()
    c.image_size = 128
    c.batch_size = 32
    c.teacher_arch = 'resnet18'
    c.num_teachers = 2
    c.teacher_classes = 7      # 5 of the task + 2 auxiliary, as the paper's source nets
    c.task_classes = 5
    c.component_arch = 'resnet18'
    c.target_arch = 'resnet18'
    c.target_widths = (72, 72, 144, 288, 576)
    c.num_tasks = 2
    c.warmup_steps = 2
    c.timed_steps = 10
    c.seed = 0
    c.compute_dtype = 'float32'  # or 'bfloat16': activations only; params and optimizer stay float32
    c.cases = ''  # comma-separated step names to time (e.g. 'supervised,stage1'); '' times every one
    if arg == 'cifar':
        c.image_size, c.batch_size = 32, 128
        c.teacher_arch = c.component_arch = c.target_arch = 'cifar_resnet20'
        c.target_widths = (18, 18, 36, 72)
    if arg == 'tiny':
        c.image_size, c.batch_size, c.timed_steps = 32, 8, 2
        c.teacher_arch = c.component_arch = c.target_arch = 'cifar_resnet8'
        c.target_widths = (18, 18, 36, 72)
    return c
