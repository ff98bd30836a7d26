"""Interoperability with the authors' PyTorch code.

`pytorch` converts between their `state_dict`s and sgan_jax's state using
NumPy only; `parity` runs one step of both implementations side by side and
needs torch (`pip install -e '.[interop]'`). The core package never imports
this subpackage.
"""
