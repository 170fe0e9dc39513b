"""The paper's stage-1 / stage-2 / supervised steps in PyTorch, as the reference for speed.

    python -m kamal_jax.benchmarks.torch_steps --config configs/bench_steps.py [--json out.json]

Runs in its own process (never imported by the JAX core). Same shapes as
`kamal_jax.benchmarks.steps`: frozen teachers in eval mode under `no_grad`, least-entropy
selection per sample, 1x1-conv bridges on both sides (stage 1) or the student side (stage 2),
MSE on features and logits, the teacher-bridge weight-norm term, Adam.

On a GPU it runs there, channels-last with cuDNN autotuning, as a PyTorch user would; with
`compute_dtype = 'bfloat16'` the steps run under bf16 autocast (params and Adam state float32).
"""

from __future__ import annotations

import json
import os
import time

os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from kamal_jax.zoo import torch_models  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/bench_steps.py', 'Benchmark config.')
_JSON = flags.DEFINE_string('json', None, 'Also write the results to this JSON file.')


def _bridges(pairs):
    return torch.nn.ModuleList([torch.nn.Conv2d(cin, cout, 1) for cin, cout in pairs])


# Entropies and losses in float32, also under bf16 autocast (as kamal_jax computes them).
def _entropy(logits):
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def _feature_mse(s, t):
    s, t = s.float(), t.float()
    if s.shape[-2:] != t.shape[-2:]:
        t = F.interpolate(t, size=s.shape[-2:], mode='bilinear', align_corners=False)
    return ((s - t) ** 2).mean(dim=(1, 2, 3))


def _logit_mse(s, t):
    return ((s.float() - t.float()) ** 2).mean(-1)


def run(c) -> dict:
    torch.set_num_threads(len(os.sched_getaffinity(0)) or 1)  # the cores this process may use (taskset)
    torch.manual_seed(c.seed)
    gpu = torch.cuda.is_available()
    device = torch.device('cuda' if gpu else 'cpu')
    layout = torch.channels_last if gpu else torch.contiguous_format  # CPU: channels-last backward crashes
    torch.backends.cudnn.benchmark = gpu
    bf16 = c.get('compute_dtype', 'float32') == 'bfloat16'

    def build(*args):
        return torch_models.build(*args).to(device, memory_format=layout)

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def sync():
        if gpu:
            torch.cuda.synchronize()

    bs, size, n = c.batch_size, c.image_size, c.task_classes
    x = torch.rand(bs, 3, size, size).to(device, memory_format=layout)
    teachers = [build(c.teacher_arch, c.teacher_classes).eval() for _ in range(c.num_teachers)]
    widths = tuple(c.target_widths) or None
    results = {}

    def timed(name, step):
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
        results[name] = {'images_per_s': c.timed_steps * bs / elapsed, 'step_ms': 1000 * elapsed / c.timed_steps,
                         'first_step_s': first}
        print(f'{name:>10}: {results[name]["images_per_s"]:7.1f} img/s  ({results[name]["step_ms"]:.0f} ms/step)',
              flush=True)

    # Supervised.
    student = build(c.component_arch, n).train()
    labels = torch.randint(0, n, (bs,)).to(device)
    opt = torch.optim.Adam(student.parameters(), lr=5e-4)

    def supervised():
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = F.cross_entropy(student(x), labels)
        loss.backward()
        opt.step()
    timed('supervised', supervised)

    # Stage 1: both sides bridged into half the teacher's widths.
    with torch.no_grad():
        _, t_feats = teachers[0].forward_features(x[:1])
        _, s_feats = student.forward_features(x[:1])
    names = [k for k in s_feats if k in t_feats]
    common = [t_feats[k].shape[1] // 2 for k in names]
    s_bridges = torch.nn.ModuleList([_bridges([(s_feats[k].shape[1], w) for k, w in zip(names, common)])
                                     for _ in teachers]).to(device, memory_format=layout)
    t_bridges = torch.nn.ModuleList([_bridges([(t_feats[k].shape[1], w) for k, w in zip(names, common)])
                                     for _ in teachers]).to(device, memory_format=layout)
    opt1 = torch.optim.Adam([{'params': student.parameters(), 'lr': 5e-4},
                             {'params': list(s_bridges.parameters()) + list(t_bridges.parameters()), 'lr': 1e-3}])

    def stage1():
        with torch.no_grad(), autocast():
            outs = [t.forward_features(x) for t in teachers]
            ent = torch.stack([_entropy(o[0][:, :n]) for o in outs])
            mask = F.one_hot(ent.argmin(0), len(teachers)).float()
        with autocast():
            logits, feats = student.forward_features(x)
            per_teacher = []
            for k, (t_logits, t_f) in enumerate(outs):
                feat = sum(_feature_mse(s_bridges[k][i](feats[name]), t_bridges[k][i](t_f[name]))
                           for i, name in enumerate(names))
                per_teacher.append(feat + _logit_mse(logits, t_logits[:, :n]))
        loss = (torch.stack(per_teacher, 1) * mask).sum(1).mean()
        for bridges in t_bridges:
            for b in bridges:
                loss = loss + ((b.weight.flatten(1).pow(2).sum(1) - 1) ** 2).mean()
        opt1.zero_grad(set_to_none=True)
        loss.backward()
        opt1.step()
    timed('stage1', stage1)

    # Stage 2: target-side bridges onto each component's widths.
    components = [build(c.component_arch, n).eval() for _ in range(c.num_tasks)]
    target = build(c.target_arch, n * c.num_tasks, widths).train()
    with torch.no_grad():
        _, c_feats = components[0].forward_features(x[:1])
        _, g_feats = target.forward_features(x[:1])
    names2 = [k for k in g_feats if k in c_feats]
    bridges2 = torch.nn.ModuleList([_bridges([(g_feats[k].shape[1], c_feats[k].shape[1]) for k in names2])
                                    for _ in components]).to(device, memory_format=layout)
    opt2 = torch.optim.Adam([{'params': target.parameters(), 'lr': 5e-4},
                             {'params': bridges2.parameters(), 'lr': 1e-3}])

    def stage2():
        with torch.no_grad(), autocast():
            outs = [m.forward_features(x) for m in components]
        loss = 0.0
        with autocast():
            logits, feats = target.forward_features(x)
            for k, (c_logits, c_f) in enumerate(outs):
                feat = sum(_feature_mse(bridges2[k][i](feats[name]), c_f[name]) for i, name in enumerate(names2))
                loss = loss + (feat + _logit_mse(logits[:, k * n:(k + 1) * n], c_logits)).mean()
        opt2.zero_grad(set_to_none=True)
        loss.backward()
        opt2.step()
    timed('stage2', stage2)
    return {'config': c.to_dict(), 'results': results, 'torch': torch.__version__,
            'threads': torch.get_num_threads(),
            'device': torch.cuda.get_device_name() if gpu else 'cpu',
            'layout': 'channels-last' if gpu else 'NCHW (channels-last conv backward crashes in this build)'}


def main(argv):
    del argv
    out = run(_CONFIG.value)
    if _JSON.value:
        with open(_JSON.value, 'w') as f:
            json.dump(out, f, indent=2)


if __name__ == '__main__':
    app.run(main)
