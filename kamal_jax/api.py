"""What kamal_jax offers the programs built on it (`kamal_jax.benchmarks`, `kamal_jax.zoo`) and its
users: the one module they import from; everything else in the package is the core's own.

    from kamal_jax.api import Distill, make_mesh, train_student

A name is looked up where it lives only when it is first read (PEP 562), so importing one name loads
only its module: a benchmark still sets its XLA flags before JAX starts, and the zoo, a PyTorch
process, loads no JAX and imports torch before anything that imports TensorFlow (the reverse aborts).
The method's pure pieces (`selection`, `losses`, `unified`) are offered whole, as users extend and
compare them; everything else by name. tests/test_layers.py checks that the tools import nothing
of the core but these names.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> (module, attribute there; None: the module itself)
WHERE = {
    # exported students
    'load_student': ('kamal_jax.export', 'load_student'),
    # configs and runs
    'apply_cpu_defaults': ('kamal_jax.xla', 'apply_cpu_defaults'),
    'resolve_config': ('kamal_jax.config_schema', 'resolve'),
    'stage_config': ('kamal_jax.config_schema', 'stage_config'),
    'stored_as_resolved': ('kamal_jax.config_schema', 'stored_as_resolved'),
    'plain': ('kamal_jax.config_schema', 'plain'),
    'load_config_file': ('kamal_jax.config_files', 'load_file'),
    'validate_config': ('kamal_jax.pipeline', 'validate'),
    'load_split': ('kamal_jax.pipeline', 'load_split'),
    'load_teachers': ('kamal_jax.pipeline', 'load_teachers'),
    'plan_from_config': ('kamal_jax.tasks', 'plan_from_config'),
    'Layout': ('kamal_jax.layout', 'Layout'),
    'summary_markdown': ('kamal_jax.summary', 'markdown'),
    'RECIPES': ('kamal_jax.recipes', 'RECIPES'),
    'one_stage_config': ('kamal_jax.recipes', 'one_stage_config'),
    'OneStage': ('kamal_jax.recipes.one_stage', 'OneStage'),
    'TwoStage': ('kamal_jax.recipes.two_stage', 'TwoStage'),
    'Run': ('kamal_jax.recipes.context', 'Run'),
    'selection_context': ('kamal_jax.recipes.teacher_passes', 'selection_context'),
    'whole_logits': ('kamal_jax.recipes.unified', 'whole_logits'),
    # the method's pure pieces
    'selection': ('kamal_jax.selection', None),
    'losses': ('kamal_jax.losses', None),
    'unified': ('kamal_jax.unified', None),
    # models and porting
    'classifier': ('kamal_jax.models', 'classifier'),
    'multihead': ('kamal_jax.models', 'multihead'),
    'port': ('kamal_jax.porting', 'port'),
    'export_generic_teacher': ('kamal_jax.porting.generic', 'export'),
    'load_graph_teacher': ('kamal_jax.porting.graph', 'load'),
    'build_torch_factory': ('kamal_jax.porting.torch_export', 'build'),
    'TORCH_TWINS': ('kamal_jax.torch_models', 'ARCHS'),
    'build_torch_twin': ('kamal_jax.torch_models', 'build'),
    # data
    'load_dataset': ('kamal_jax.data.datasets', 'load'),
    'load_folder': ('kamal_jax.data.folder', 'load'),
    'resize_array': ('kamal_jax.data.pixels', 'resize_array'),
    'open_record_split': ('kamal_jax.data.records', 'open_split'),
    # training
    'Net': ('kamal_jax.train.nets', 'Net'),
    'Amalgamate': ('kamal_jax.train.objectives', 'Amalgamate'),
    'Distill': ('kamal_jax.train.objectives', 'Distill'),
    'Supervised': ('kamal_jax.train.objectives', 'Supervised'),
    'LossWeights': ('kamal_jax.train.objectives', 'LossWeights'),
    'make_pairs': ('kamal_jax.train.objectives', 'make_pairs'),
    'create_state': ('kamal_jax.train.state', 'create_state'),
    'make_optimizer': ('kamal_jax.train.state', 'make_optimizer'),
    'make_train_step': ('kamal_jax.train.steps', 'make_train_step'),
    'train_student': ('kamal_jax.train.trainer', 'train_student'),
    'to_unit': ('kamal_jax.train.augment', 'to_unit'),
    'make_mesh': ('kamal_jax.train.sharding', 'make_mesh'),
    'jit_train_step': ('kamal_jax.train.sharding', 'jit_train_step'),
    'put_batch': ('kamal_jax.train.sharding', 'put_batch'),
    'put_replicated': ('kamal_jax.train.sharding', 'put_replicated'),
    'replicated': ('kamal_jax.train.sharding', 'replicated'),
    'predict': ('kamal_jax.train.evaluate', 'predict'),
    'task_targets': ('kamal_jax.train.evaluate', 'task_targets'),
    'load_or_build_teacher_cache': ('kamal_jax.train.teacher_cache', 'load_or_build'),
    'teacher_outputs_fn': ('kamal_jax.train.teacher_cache', 'outputs_fn'),
    'teacher_logits_key': ('kamal_jax.train.teacher_cache', 'logits_key'),
    'selected_slots': ('kamal_jax.train.teacher_cache', 'selected_slots'),
    # files and progress
    'sha256': ('kamal_jax.files', 'sha256'),
    'write_atomic_with': ('kamal_jax.files', 'write_atomic_with'),
    'eta_text': ('kamal_jax.progress', 'eta_text'),
}

__all__ = tuple(WHERE)


def __getattr__(name: str) -> Any:
    if name not in WHERE:
        raise AttributeError(f'kamal_jax.api offers no {name!r}; it offers {", ".join(sorted(WHERE))}.')
    module, attribute = WHERE[name]
    found = importlib.import_module(module)
    value = globals()[name] = found if attribute is None else getattr(found, attribute)
    return value


def __dir__() -> list[str]:
    return sorted(WHERE)
