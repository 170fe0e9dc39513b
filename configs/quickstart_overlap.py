"""The quickstart's four teachers read as teachers that know different classes, and a student for
digits picked across them (docs/BENCHMARKS.md, "Teachers that know different classes"):

    python launch.py --config configs/quickstart_overlap.py --workdir runs/quickstart_overlap --config.recipe=unified

Each quickstart teacher knows 7 digits: the 5 of its task and 2 of the other half (`classes`, in
logit order, as its zoo entry trained it). Tasks picked by class names: `all_ten` (no teacher knows
more than 7) and `picked_four` (1, 4, 6, 8: each teacher lacks one of them). Recipe `unified` (UHC's
cross-entropy estimate), baselines `naive_union` and `supervised`; the data, zoo and budget are the
quickstart's (one-stage recipes: 2 x 40 + 40 epochs). `:tiny` as the quickstart's.
"""

import importlib.util
import os


def _quickstart():
    spec = importlib.util.spec_from_file_location('quickstart', os.path.join(os.path.dirname(__file__), 'quickstart.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config(arg: str = ''):
    c = _quickstart().get_config(arg)
    c.teachers = {name: dict(arch=t.arch, checkpoint=t.checkpoint, mean=t.mean, std=t.std,
                             classes=c.zoo.teachers[name].classes) for name, t in c.teachers.items()}
    c.tasks = dict(all_ten=dict(classes=[str(d) for d in range(10)]), picked_four=dict(classes=['1', '4', '6', '8']))
    c.target_tasks = ('all_ten', 'picked_four')
    c.recipe = 'unified'
    c.baselines = ('naive_union', 'supervised')
    return c
