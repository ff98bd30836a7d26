"""sgan_jax: structural adversarial objectives (Zhang & Maire, arXiv 2310.00357)
in JAX/Flax. Start with `losses` (the objectives), `models` (D and G), `step`
(the training step) and `train` (the training loop); docs/layout.md maps the rest."""
