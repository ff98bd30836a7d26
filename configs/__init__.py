"""The configs shipped with sgan_jax (installed as `sgan_jax.configs`).

Pass one by path (`--config=configs/cifar10.py`) or, after any install, by
name (`--config=cifar10`; `config_lib.load_config("cifar10")`).
"""
