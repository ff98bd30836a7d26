"""sgan_jax: structural adversarial objectives (Zhang & Maire, arXiv 2310.00357)
in JAX/Flax. Start with `losses` (the objectives), `models` (D and G) and
`train` (the step and the loop); README.md maps the rest."""
