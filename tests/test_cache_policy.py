"""The logits cache's `auto` setting decides as its docstring says (kamal_jax.train.cache_policy)."""

import pytest

from kamal_jax.train import cache_policy

GIB = 2 ** 30


def decide(setting='auto', **kw):
    args = dict(teacher_flops=666e6, student_flops=82e6, epochs=30, augmented=True, views=0,
                bytes_per_view=50000 * 40 * 2, limit_bytes=8 * GIB, device_kind='cpu')
    args.update(kw)
    return cache_policy.decide(setting, **args)


def test_a_pool_of_deep_teachers_is_cached_with_the_default_views():
    # Four CIFAR ResNets (depths 20-56, ~666 MFLOPs together) teaching a ResNet-20 for 30 epochs:
    # live 30 x (246 + 666) against 4 x 666 + 30 x 246 MFLOPs per image.
    d = decide()
    assert d.cached and d.views == cache_policy.AUTO_VIEWS
    assert d.gain == pytest.approx(30 * (246 + 666) / (4 * 666 + 30 * 246))
    assert d.cache_bytes == 4 * 50000 * 40 * 2
    assert 'on, 4 views per image (auto)' in d.line() and '2.72x' in d.line()


def test_two_small_teachers_over_few_epochs_run_live():
    # The quickstart's shape: two teachers cheaper than the student, 10 epochs over 4 views.
    d = decide(teacher_flops=20e6, student_flops=40e6, epochs=10)
    assert not d.cached and d.views == 0
    assert d.gain == pytest.approx(10 * 140 / (80 + 1200))
    assert 'under the 1.25x' in d.line()


def test_the_device_kind_moves_the_threshold():
    # gain 1.38: enough on a CPU, not on a GPU or TPU.
    kw = dict(teacher_flops=100e6, student_flops=60e6, epochs=20)
    assert cache_policy.flops_gain(teacher_flops=100e6, student_flops=60e6, epochs=20, views=4) == \
        pytest.approx(20 * 280 / (400 + 3600))
    assert decide(**kw).cached
    assert not decide(device_kind='NVIDIA H100 80GB HBM3', **kw).cached
    assert not decide(device_kind='TPU v4', **kw).cached


def test_views_without_augmentation_and_set_by_the_user():
    assert decide(augmented=False).views == 1
    assert decide(views=2).views == 2
    assert decide(augmented=False, views=3).views == 1  # every view would be the same image


def test_auto_draws_no_more_views_than_epochs():
    # Two epochs see two views of each image; a third and fourth would cost teachers' passes for nothing.
    d = decide('on', epochs=2)
    assert d.cached and d.views == 2 and d.cache_bytes == 2 * 50000 * 40 * 2
    assert decide('on', epochs=1).views == 1
    assert decide('on', epochs=2, views=3).views == 3  # the user's views stand
    # As many views as epochs saves nothing, so auto runs the teachers live there.
    d = decide(epochs=2)
    assert not d.cached and d.gain == pytest.approx(1.0)


def test_a_cache_over_its_limit_runs_live_or_refuses_when_forced():
    d = decide(bytes_per_view=3 * GIB)
    assert not d.cached and 'limit' in d.why
    with pytest.raises(ValueError, match='12.00 GiB, more than its limit of 8 GiB'):
        decide('on', bytes_per_view=3 * GIB)


def test_on_and_off_force_it_and_a_live_recipe_says_why():
    assert decide('on', teacher_flops=1e6, student_flops=1e9).cached
    assert not decide('off').cached
    d = decide(needs_live='recipe one_stage matches the teachers\' features')
    assert not d.cached and 'features' in d.line()
    with pytest.raises(ValueError, match='set on, but recipe one_stage'):
        decide('on', needs_live='recipe one_stage matches the teachers\' features')
    with pytest.raises(ValueError, match="one of \\('auto', 'on', 'off'\\)"):
        decide('sometimes')


def test_views_that_would_not_fit_in_memory_run_live():
    d = decide(image_bytes_per_view=2 * GIB, image_limit_bytes=4 * GIB)
    assert not d.cached and '8.00 GiB of images in memory' in d.why
    assert decide(augmented=False, image_bytes_per_view=2 * GIB, image_limit_bytes=4 * GIB).cached  # no views drawn
