"""Throughput of the training step on synthetic data.

`python -m sgan_jax.benchmark --config=configs/cifar10.py [--steps=N]
 [--json=out.json] [--config.global_batch_size=...]`

Prints the compile time, the median step time over N timed steps (after
warm-up) and images/s, and writes the same figures as JSON. Only JAX is
needed (no TensorFlow): the batch is random images already on the devices.
"""
import json
import platform
import statistics
import time

from absl import app, flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags

from sgan_jax import config_lib, sharding, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file.",
                                lock_config=True)
flags.DEFINE_integer("steps", 20, "Timed steps (after warm-up).")
flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
flags.DEFINE_string("json", None, "Write the figures to this JSON file.")
flags.mark_flags_as_required(["config"])


def synthetic_batch(config, mesh, seed=0):
  b, s = config.global_batch_size, config.image_size
  key = jax.random.PRNGKey(seed)
  batch = {"image": jax.random.uniform(key, (b, s, s, 3), minval=-1.0, maxval=1.0),
           "label": jnp.arange(b, dtype=jnp.int32) % config.num_classes}
  return jax.device_put(batch, sharding.batch_sharding(mesh))


def measure(config, steps: int, warmup: int):
  """Compile and step times of the sharded train step; returns a dict."""
  mesh = sharding.make_mesh()
  config_lib.validate(config, jax.process_count(), jax.device_count())
  state = jax.device_put(train.create_train_state(config, jax.random.PRNGKey(0)),
                         sharding.replicated(mesh))
  batch = synthetic_batch(config, mesh)
  t0 = time.perf_counter()
  step = train.make_sharded_train_step(mesh).lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  for _ in range(warmup):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  median = statistics.median(times)
  return {
      "backend": jax.default_backend(),
      "device": jax.devices()[0].device_kind,
      "num_devices": jax.device_count(),
      "host": platform.node(),
      "jax_version": jax.__version__,
      "global_batch_size": config.global_batch_size,
      "image_size": config.image_size,
      "compile_s": compile_s,
      "timed_steps": steps,
      "step_time_median_s": median,
      "step_time_min_s": min(times),
      "images_per_s": config.global_batch_size / median,
      "final_d_loss": float(metrics["d/loss"]),
      "final_g_loss": float(metrics["g/loss"]),
  }


def main(argv):
  del argv
  result = measure(FLAGS.config, FLAGS.steps, FLAGS.warmup)
  for key, value in result.items():
    print(f"{key:>22}: {value:.4g}" if isinstance(value, float) else f"{key:>22}: {value}")
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  app.run(main)
