"""Teacher zoo: PyTorch teachers trained on disjoint class subsets (`python -m kamal_jax.zoo`).

A tool on top of the core: it imports the core only through `kamal_jax.api`; a run that trains its
own teachers starts it as a process of its own (`python -m kamal_jax.zoo`) and never imports it.
`train` needs PyTorch.
"""
