"""The paper's stage-1 / stage-2 / supervised steps and the default one-stage recipe's step
(`product`, teachers live) in PyTorch, as the reference for speed.

    python -m kamal_jax.benchmarks.torch_steps --config configs/bench_steps.py [--json out.json]

Runs in its own process (never imported by the JAX core). Same shapes as
`kamal_jax.benchmarks.steps`: frozen teachers in eval mode under `no_grad`, least-entropy
selection per sample, 1x1-conv bridges on both sides (stage 1) or the student side (stage 2),
MSE on features and logits, the teacher-bridge weight-norm term, Adam.

The rival is PyTorch at its strongest here: every step is timed in both memory layouts, NCHW and
channels-last, and (`--torch_compile`, on by default on a GPU) under `torch.compile` too; the
results name each setting and `best` the fastest per step. Channels-last is timed only where it
computes what NCHW does: before timing, the same nets from the same seed take CHECK_STEPS
optimizer steps, and at each one the losses and gradients of both layouts are compared with a
float64 NCHW reference (`check_layouts`); a step where channels-last is off by more than CHECK_RTOL
is reported with the parameter that differs most, its shape and the difference, and left out. On a GPU cuDNN autotunes; with `compute_dtype = 'bfloat16'` the steps run
under bf16 autocast (params and Adam state float32).
"""

from __future__ import annotations

import json
import math
import os
import time

os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from kamal_jax.api import build_torch_twin  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/bench_steps.py', 'Benchmark config.')
_JSON = flags.DEFINE_string('json', None, 'Also write the results to this JSON file.')
_COMPILE = flags.DEFINE_enum('torch_compile', 'auto', ['auto', 'on', 'off'],
                             'Also time each step under torch.compile (auto: on a GPU only).')


def _bridges(pairs):
    return torch.nn.ModuleList([torch.nn.Conv2d(cin, cout, 1) for cin, cout in pairs])


# Entropies and losses in float32, also under bf16 autocast (as kamal_jax computes them); the
# float64 reference of `check_layouts` stays float64.
def _f32(x):
    return x if x.dtype == torch.float64 else x.float()


def _entropy(logits):
    logp = F.log_softmax(_f32(logits), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def _feature_mse(s, t):
    s, t = _f32(s), _f32(t)
    if s.shape[-2:] != t.shape[-2:]:
        t = F.interpolate(t, size=s.shape[-2:], mode='bilinear', align_corners=False)
    return ((s - t) ** 2).mean(dim=(1, 2, 3))


def _logit_mse(s, t):
    return ((_f32(s) - _f32(t)) ** 2).mean(-1)


LAYOUTS = {'nchw': torch.contiguous_format, 'channels_last': torch.channels_last}
CHECK_STEPS = 3     # optimizer steps compared between the layouts before any timing
# Channels-last must match a float64 NCHW reference within this relative L2 error over all gradients
# (and the loss): float32 NCHW itself is off by up to about 5e-3 at CIFAR scale (batch norms cancel
# most of a gradient), a less precise kernel passes, wrong values (errors of order 1) do not.
CHECK_RTOL = 2e-2


def build_cases(c, device, layout, bf16: bool, dtype=torch.float32) -> dict:
    """Per step name, (loss_fn, params, optimizer) on nets built from `c.seed`: the same weights and
    inputs in every layout, so the layouts can be compared value for value (`dtype`: float64 for a reference)."""
    torch.manual_seed(c.seed)

    def build(*args):
        return build_torch_twin(*args).to(device, dtype, memory_format=layout)

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    bs, size, n = c.batch_size, c.image_size, c.task_classes
    x = torch.rand(bs, 3, size, size).to(device, dtype, memory_format=layout)
    teachers = [build(c.teacher_arch, c.teacher_classes).eval() for _ in range(c.num_teachers)]
    widths = tuple(c.target_widths) or None
    cases = {}

    # Supervised.
    student = build(c.component_arch, n).train()
    labels = torch.randint(0, n, (bs,)).to(device)

    def supervised():
        with autocast():
            return F.cross_entropy(student(x), labels)
    cases['supervised'] = (supervised, list(student.parameters()),
                           torch.optim.Adam(student.parameters(), lr=5e-4))

    # Stage 1: both sides bridged into half the teacher's widths.
    student1 = build(c.component_arch, n).train()
    with torch.no_grad():
        _, t_feats = teachers[0].forward_features(x[:1])
        _, s_feats = student1.forward_features(x[:1])
    names = [k for k in s_feats if k in t_feats]
    common = [t_feats[k].shape[1] // 2 for k in names]
    s_bridges = torch.nn.ModuleList([_bridges([(s_feats[k].shape[1], w) for k, w in zip(names, common)])
                                     for _ in teachers]).to(device, dtype, memory_format=layout)
    t_bridges = torch.nn.ModuleList([_bridges([(t_feats[k].shape[1], w) for k, w in zip(names, common)])
                                     for _ in teachers]).to(device, dtype, memory_format=layout)
    bridge_params = list(s_bridges.parameters()) + list(t_bridges.parameters())

    def stage1():
        with torch.no_grad(), autocast():
            outs = [t.forward_features(x) for t in teachers]
            ent = torch.stack([_entropy(o[0][:, :n]) for o in outs])
            mask = F.one_hot(ent.argmin(0), len(teachers)).float()
        with autocast():
            logits, feats = student1.forward_features(x)
            per_teacher = []
            for k, (t_logits, t_f) in enumerate(outs):
                feat = sum(_feature_mse(s_bridges[k][i](feats[name]), t_bridges[k][i](t_f[name]))
                           for i, name in enumerate(names))
                per_teacher.append(feat + _logit_mse(logits, t_logits[:, :n]))
        loss = (torch.stack(per_teacher, 1) * mask).sum(1).mean()
        for bridges in t_bridges:
            for b in bridges:
                loss = loss + ((b.weight.flatten(1).pow(2).sum(1) - 1) ** 2).mean()
        return loss
    cases['stage1'] = (stage1, list(student1.parameters()) + bridge_params,
                       torch.optim.Adam([{'params': student1.parameters(), 'lr': 5e-4},
                                         {'params': bridge_params, 'lr': 1e-3}]))

    # Stage 2: target-side bridges onto each component's widths.
    components = [build(c.component_arch, n).eval() for _ in range(c.num_tasks)]
    target = build(c.target_arch, n * c.num_tasks, widths).train()
    with torch.no_grad():
        _, c_feats = components[0].forward_features(x[:1])
        _, g_feats = target.forward_features(x[:1])
    names2 = [k for k in g_feats if k in c_feats]
    bridges2 = torch.nn.ModuleList([_bridges([(g_feats[k].shape[1], c_feats[k].shape[1]) for k in names2])
                                    for _ in components]).to(device, dtype, memory_format=layout)

    def stage2():
        with torch.no_grad(), autocast():
            outs = [m.forward_features(x) for m in components]
        loss = 0.0
        with autocast():
            logits, feats = target.forward_features(x)
            for k, (c_logits, c_f) in enumerate(outs):
                feat = sum(_feature_mse(bridges2[k][i](feats[name]), c_f[name]) for i, name in enumerate(names2))
                loss = loss + (feat + _logit_mse(logits[:, k * n:(k + 1) * n], c_logits)).mean()
        return loss
    cases['stage2'] = (stage2, list(target.parameters()) + list(bridges2.parameters()),
                       torch.optim.Adam([{'params': target.parameters(), 'lr': 5e-4},
                                         {'params': bridges2.parameters(), 'lr': 1e-3}]))

    # The default one-stage recipe (`product`): the target learns the teachers' combined soft target
    # (softmax of their mean logits at T = 4) by KL, every teacher run live on the batch.
    target1 = build(c.target_arch, n * c.num_tasks, widths).train()

    def one_stage(temperature=4.0):
        with torch.no_grad(), autocast():
            mean = torch.stack([_f32(t(x)[:, :n]) for t in teachers]).mean(0)
            target_probs = F.softmax(mean / temperature, -1)
        with autocast():
            logq = F.log_softmax(_f32(target1(x)[:, :n]) / temperature, -1)
        return F.kl_div(logq, target_probs, reduction='batchmean') * temperature ** 2
    cases['one_stage'] = (one_stage, list(target1.parameters()),
                          torch.optim.Adam(target1.parameters(), lr=5e-4))
    return cases


def _errors(reference, grads, shapes) -> tuple[float, str | None]:
    """||g - g_ref|| / ||g_ref|| over all gradients together (L2), and the tensor with the largest
    share of the difference (a near-zero gradient's own relative error says little)."""
    diff2, ref2, where, most = 0.0, 0.0, None, -1.0
    for i, (r, g) in enumerate(zip(reference, grads)):
        if r is None or g is None:
            continue
        d = float((g.double() - r).pow(2).sum())
        d = d if math.isfinite(d) else math.inf
        diff2, ref2 = diff2 + d, ref2 + float(r.pow(2).sum())
        if d > most:
            most, where = d, f'param {i} of shape {shapes[i]}'
    return math.sqrt(diff2 / max(ref2, 1e-300)), where


def check_layouts(c, device, bf16: bool, steps: int = CHECK_STEPS) -> dict:
    """Per step: does channels-last compute NCHW's losses and gradients, over `steps` optimizer steps?

    Both float32 layouts and a float64 NCHW reference start each step from the same weights (the
    float32 NCHW run's, which alone takes the optimizer step), so only the layout differs.
    Channels-last matches when its loss and all its gradients together stay within CHECK_RTOL
    (relative, L2) of the reference at every step; float32 NCHW's own error is reported beside it.
    Returns per step name {'ok', 'loss_rel', 'grad_rel', 'nchw_grad_rel', 'worst', ...}."""
    runs = {'float64': build_cases(c, device, LAYOUTS['nchw'], False, torch.float64),
            'nchw': build_cases(c, device, LAYOUTS['nchw'], bf16),
            'channels_last': build_cases(c, device, LAYOUTS['channels_last'], bf16)}
    tol = CHECK_RTOL if not bf16 else 1e-1
    report = {}
    for case in runs['nchw']:
        shapes = [tuple(p.shape) for p in runs['nchw'][case][1]]
        ok, loss_rel, grad_rel, nchw_rel, worst, first_bad = True, 0.0, 0.0, 0.0, None, None
        for step in range(steps):
            with torch.no_grad():
                for a, r, b in zip(runs['nchw'][case][1], runs['float64'][case][1], runs['channels_last'][case][1]):
                    r.copy_(a)
                    b.copy_(a)
            got = {}
            for name, cases in runs.items():
                loss_fn, params, opt = cases[case]
                opt.zero_grad(set_to_none=True)
                loss = loss_fn()
                loss.backward()
                got[name] = (float(loss.detach()), [None if p.grad is None else p.grad.detach().cpu().clone()
                                                    for p in params])
            runs['nchw'][case][2].step()  # only NCHW's weights move; the others copy them
            ref_loss, ref = got['float64']
            err_nchw, _ = _errors(ref, got['nchw'][1], shapes)
            err_cl, where = _errors(ref, got['channels_last'][1], shapes)
            loss_cl = got['channels_last'][0]
            step_loss = abs(loss_cl - ref_loss) / max(abs(ref_loss), 1e-30) if math.isfinite(loss_cl) else math.inf
            bad = step_loss > tol or err_cl > tol
            if bad and first_bad is None:
                first_bad = step
            ok &= not bad
            nchw_rel = max(nchw_rel, err_nchw)
            loss_rel = max(loss_rel, step_loss)
            if err_cl >= grad_rel:
                grad_rel, worst = err_cl, f'{where} at step {step}'
        report[case] = {'ok': ok, 'loss_rel': loss_rel, 'grad_rel': grad_rel, 'nchw_grad_rel': nchw_rel,
                        'worst': worst, 'first_mismatch_step': first_bad, 'steps': steps, 'rtol': tol}
        print(f'{case:>10}: against float64 over {steps} steps, channels-last loss {loss_rel:.1e}, grads '
              f'{grad_rel:.1e} ({worst}); NCHW grads {nchw_rel:.1e} -> {"match" if ok else "MISMATCH"}', flush=True)
    return report


def run(c, torch_compile: bool | None = None) -> dict:
    torch.set_num_threads(len(os.sched_getaffinity(0)) or 1)  # the cores this process may use (taskset)
    gpu = torch.cuda.is_available()
    device = torch.device('cuda' if gpu else 'cpu')
    torch.backends.cudnn.benchmark = gpu
    bf16 = c.compute_dtype == 'bfloat16'
    torch_compile = gpu if torch_compile is None else torch_compile

    def sync():
        if gpu:
            torch.cuda.synchronize()

    check = check_layouts(c, device, bf16)
    settings = [('nchw', False), ('channels_last', False)]
    if torch_compile:
        settings += [('nchw', True), ('channels_last', True)]
    results = {}
    for layout, compiled in settings:
        setting = layout + ('+compile' if compiled else '')
        for case, (loss_fn, _, opt) in build_cases(c, device, LAYOUTS[layout], bf16).items():
            if layout == 'channels_last' and not check[case]['ok']:
                continue
            fn = torch.compile(loss_fn) if compiled else loss_fn

            def step(fn=fn, opt=opt):
                opt.zero_grad(set_to_none=True)
                fn().backward()
                opt.step()
            t0 = time.perf_counter()
            step()
            sync()
            first = time.perf_counter() - t0
            for _ in range(max(0, c.warmup_steps - 1)):
                step()
            sync()
            t0 = time.perf_counter()
            for _ in range(c.timed_steps):
                step()
            sync()
            elapsed = time.perf_counter() - t0
            r = {'images_per_s': c.timed_steps * c.batch_size / elapsed, 'step_ms': 1000 * elapsed / c.timed_steps,
                 'first_step_s': first}
            results.setdefault(setting, {})[case] = r
            print(f'{case:>10} {setting:>22}: {r["images_per_s"]:7.1f} img/s  ({r["step_ms"]:.0f} ms/step)', flush=True)
    best = {}
    for setting, cases in results.items():
        for case, r in cases.items():
            if case not in best or r['images_per_s'] > best[case]['images_per_s']:
                best[case] = dict(r, setting=setting)
    return {'config': c.to_dict(), 'results': best, 'by_setting': results, 'layout_check': check,
            'torch': torch.__version__, 'threads': torch.get_num_threads(),
            'device': torch.cuda.get_device_name() if gpu else 'cpu'}


def main(argv):
    del argv
    out = run(_CONFIG.value, {'auto': None, 'on': True, 'off': False}[_COMPILE.value])
    if _JSON.value:
        with open(_JSON.value, 'w') as f:
            json.dump(out, f, indent=2)


if __name__ == '__main__':
    app.run(main)
