"""Teacher zoo: PyTorch teachers trained on disjoint class subsets (`python -m kamal_jax.zoo`).

Nothing here is imported by the JAX core; `train` needs PyTorch.
"""
