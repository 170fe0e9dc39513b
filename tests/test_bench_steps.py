"""The step benchmark measures every case, including the cached steps, and tabulates the ratios."""
import dataclasses
import importlib.util
import os

import numpy as np
import pytest

import toy
from kamal_jax.benchmarks import cache_run, steps
from kamal_jax.train import teacher_cache


def _tiny():
    spec = importlib.util.spec_from_file_location(
        'bench_steps', os.path.join(os.path.dirname(os.path.dirname(__file__)), 'configs', 'bench_steps.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config('tiny')
    c.image_size, c.batch_size, c.warmup_steps, c.timed_steps = 16, 4, 1, 1
    return c


def test_benchmark_times_every_case_and_tabulates():
    out = steps.run(_tiny())
    cases = ('supervised', 'supervised_target', 'stage1', 'stage2', 'stage1_cached', 'stage2_cached',
             'one_stage', 'one_stage_cached', 'stage1_cache_build', 'stage2_cache_build')
    assert tuple(out['results']) == cases
    assert all(r['images_per_s'] > 0 and r['first_step_s'] > 0 for r in out['results'].values())
    torch_like = {'supervised': {'images_per_s': 10.0}, 'stage1': {'images_per_s': 5.0},
                  'stage2': {'images_per_s': 4.0}}
    lines = steps.table(out['results'], torch_like).splitlines()
    assert len(lines) == 2 + len(cases)
    cached = next(l for l in lines if l.startswith('| stage1_cached |'))
    rate = out['results']['stage1_cached']['images_per_s']
    assert f'{rate / 5.0:.2f}x' in cached  # against the PyTorch recipe's stage 1
    sup = out['results']['supervised']['images_per_s']
    assert f'{rate / sup:.2f}x' in cached
    stage2 = next(l for l in lines if l.startswith('| stage2_cached |'))  # against the target's own step
    target_sup = out['results']['supervised_target']['images_per_s']
    assert f"{out['results']['stage2_cached']['images_per_s'] / target_sup:.2f}x" in stage2
    assert lines[-1].endswith('| | |')  # cache builds have no PyTorch counterpart
    one_stage = next(l for l in lines if l.startswith('| one_stage_cached |'))  # the target's own step too
    assert f"{out['results']['one_stage_cached']['images_per_s'] / target_sup:.2f}x" in one_stage


def test_cache_rows_hold_only_the_selected_teachers_features():
    a, a_vars = toy.teacher('a_t', 'cifar_resnet8', 7, {'a': (0, 5)}, seed=3)
    b, b_vars = toy.teacher('b_t', 'cifar_resnet8', 7, {'a': (2, 7)}, seed=4)
    stage = toy.stage1([a, b], offline=True, cached=True)
    frozen = {'a_t': a_vars, 'b_t': b_vars}
    images = toy.images(4)
    stage = dataclasses.replace(stage, selected_slots=teacher_cache.selected_slots(stage.cache_spec(), frozen, images.shape[1:]))
    rows = steps._cache_rows(stage, frozen, {'image': images, 'selected': np.array([0, 1, 1, 0], np.int32)})
    assert {'cache/a_t/logits', 'cache/b_t/logits'} <= set(rows)
    assert not any(k.startswith(('cache/a_t/stage', 'cache/b_t/stage')) for k in rows)
    assert all(np.asarray(v).dtype == np.float16 for k, v in rows.items() if k.startswith('cache/selected'))


@pytest.mark.parametrize('stage', ['1', '2'])
def test_cached_run_reports_throughput_and_memory(tmp_path, stage):
    c = _tiny()
    out = cache_run.run(c, images=12, epochs=2, stage_no=stage, workdir=str(tmp_path / 'w'))
    files = os.listdir(tmp_path / 'w' / 'cache')
    assert ('selected.npy' in files) == (stage == '1')  # stage 1: the build made the offline selection
    assert out['cache_gib'] > 0 and out['peak_rss_gib'] >= out['peak_anon_gib'] > 0
    assert out['train_images_per_s'] > 0 and out['build_images_per_s'] > 0
    assert out['first_epoch_images_per_s'] < out['train_images_per_s']  # the build is counted in


def test_benchmark_nets_compute_in_the_configured_dtype():
    import jax
    import jax.numpy as jnp
    c = _tiny()
    c.compute_dtype = 'bfloat16'
    teachers, teacher_vars, component, target, comps, _ = steps.random_nets(c, jax.random.key(0))
    nets = [*teachers, component, target, *(n for _, n in comps)]
    assert all(n.dtype == jnp.bfloat16 for n in nets)
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(teacher_vars))  # params stay float32
    logits, _ = component.module.apply(component.module.init(jax.random.key(1), jnp.zeros((1, 16, 16, 3))),
                                       jnp.zeros((2, 16, 16, 3), jnp.bfloat16), train=False)
    assert jax.tree.leaves(logits)[0].dtype == jnp.bfloat16
    c.compute_dtype = 'float32'
    assert steps.random_nets(c, jax.random.key(0))[2].dtype is None


def test_torch_recipe_runs_under_bf16_autocast(tmp_path):
    import json
    import subprocess
    import sys
    out = tmp_path / 'torch.json'
    root = os.path.dirname(os.path.dirname(__file__))
    subprocess.run([sys.executable, '-m', 'kamal_jax.benchmarks.torch_steps', '--config=configs/bench_steps.py:tiny',
                    '--config.compute_dtype=bfloat16', '--config.timed_steps=1', '--config.warmup_steps=1',
                    f'--json={out}'], check=True, cwd=root, capture_output=True)
    result = json.loads(out.read_text())
    assert set(result['results']) == {'supervised', 'stage1', 'stage2', 'one_stage'}
    assert all(r['images_per_s'] > 0 for r in result['results'].values())
    assert result['config']['compute_dtype'] == 'bfloat16' and result['device'] == 'cpu'


def test_torch_rival_times_both_layouts_and_drops_a_layout_whose_gradients_are_wrong(tmp_path):
    """The PyTorch rival is timed in every layout whose losses and gradients match a float64
    reference, its fastest setting is the one reported; a layout computing something else (here
    channels-last made to scale its loss by 1.1) is caught by the check and never timed."""
    import json
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(__file__))
    script = f'''
import json, sys, torch
from configs import bench_steps
from kamal_jax.benchmarks import torch_steps as ts
c = bench_steps.get_config('tiny'); c.timed_steps = 1; c.warmup_steps = 1
good = ts.run(c, torch_compile=False)
build = ts.build_cases
def broken(c, device, layout, bf16, dtype=torch.float32):
    cases = build(c, device, layout, bf16, dtype)
    if layout is torch.channels_last:
        cases = {{k: ((lambda f=f: 1.1 * f()), p, o) for k, (f, p, o) in cases.items()}}
    return cases
ts.build_cases = broken
bad = ts.run(c, torch_compile=False)
json.dump({{'good': good, 'bad': bad}}, open(sys.argv[1], 'w'))
'''
    out = tmp_path / 'rival.json'
    subprocess.run([sys.executable, '-c', script, str(out)], check=True, cwd=root, capture_output=True,
                   env={**os.environ, 'PYTHONPATH': root})
    result = json.loads(out.read_text())
    good, bad = result['good'], result['bad']
    assert set(good['layout_check']) == {'supervised', 'stage1', 'stage2', 'one_stage'}
    for case, check in good['layout_check'].items():
        assert check['ok'] and check['grad_rel'] < 2e-2 and check['loss_rel'] < 1e-5, (case, check)
        rates = {s: good['by_setting'][s][case]['images_per_s'] for s in ('nchw', 'channels_last')}
        assert good['results'][case]['setting'] == max(rates, key=rates.get)
        assert good['results'][case]['images_per_s'] == max(rates.values())
    for case, check in bad['layout_check'].items():
        assert not check['ok'] and check['first_mismatch_step'] == 0, (case, check)
        assert check['loss_rel'] > 0.05 and check['worst'].startswith('param ')
    assert set(bad['by_setting']) == {'nchw'}
    assert all(r['setting'] == 'nchw' for r in bad['results'].values())


def test_benchmark_times_only_the_named_cases_including_the_logits_only_diagnostics():
    c = _tiny()
    c.cases = 'stage1_logits_only,supervised'
    out = steps.run(c)
    assert set(out['results']) == {'supervised', 'stage1_logits_only'}
    assert all(r['images_per_s'] > 0 for r in out['results'].values())
    c.cases = 'supervised,stage3'
    with pytest.raises(ValueError, match=r"config.cases names unknown steps \['stage3'\]"):
        steps.run(c)


def test_projection_counts_train_step_flops_and_scales_hours():
    """The ImageNet projection's FLOPs are XLA's count of the real train steps: a supervised step
    is about three forward passes of the student (forward, and backward at twice that), stage 1
    adds the teachers' forward passes; hours follow from the rates."""
    import jax
    import jax.numpy as jnp
    from kamal_jax.benchmarks import projection
    from kamal_jax.train import evaluate as eval_lib
    c = _tiny()
    flops = projection.step_flops(c)
    teachers, teacher_vars, component, *_ = steps.random_nets(c, jax.random.key(0))
    variables = component.module.init(jax.random.key(1), jnp.zeros((1, c.image_size, c.image_size, 3)))
    forward = eval_lib.forward_flops(component, variables, (c.image_size, c.image_size, 3))
    teacher_forward = eval_lib.forward_flops(teachers[0], teacher_vars[teachers[0].name],
                                             (c.image_size, c.image_size, 3))
    assert 2.5 * forward < flops['supervised']['flops_per_image'] < 3.5 * forward
    extra = flops['stage1']['flops_per_image'] - flops['supervised']['flops_per_image']
    assert extra > 1.5 * teacher_forward  # two teachers' forward passes, plus bridges
    p = projection.project(flops, flops, epochs1=3, epochs2=2, tasks=2, devices_per_host=8, hosts=2)
    stage1 = p['rows']['stage1']
    assert stage1['images_per_s_per_chip'] == pytest.approx(projection.MEASURED['stage1'])  # same FLOPs
    assert stage1['hours'] == pytest.approx(6 * projection.IMAGENET_TRAIN / (projection.MEASURED['stage1'] * 16) / 3600)
    assert p['total_hours'] == pytest.approx(stage1['hours'] + p['rows']['stage2']['hours'])
