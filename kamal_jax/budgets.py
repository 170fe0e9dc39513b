"""The shipped benchmark configs' budget switches: `:reduced` and `:tiny` (docs/BENCHMARKS.md)."""

from __future__ import annotations


def shrink_to_reduced(c, *, images: int = 10000, epochs: int = 5) -> None:
    """The benchmarks' `:reduced` budget, the recipe x selector matrix's (docs/BENCHMARKS.md): a seeded
    subset of the training images and fewer epochs per stage, so that a recipe takes tens of minutes
    on a CPU core rather than hours. The zoo, its data and the held-out split stay as in the full
    config, so the teachers are the full benchmark's."""
    c.data.train_limit = images
    c.stage1.epochs = c.stage2.epochs = epochs
    c.baselines = ('average', 'product', 'one_stage')


def shrink_to_tiny(c, *, batch_size: int = 32) -> None:
    """The benchmarks' `:tiny` smoke version: one epoch everywhere, small batches."""
    for t in c.zoo.teachers.values():
        t.epochs, t.batch_size = 1, batch_size
    c.stage1.epochs = c.stage2.epochs = 1
    c.stage1.batch_size = c.stage2.batch_size = batch_size
    c.baseline_stage.epochs = 1
    c.eval_batch_size = 128
    c.log_every = 5
