"""How fast the input pipeline feeds the step (`python -m sgan_jax.benchmark`,
`--pipeline_batches`, `--pipeline_workers`).

For each number of loader worker processes: images/s of the host's part
with the augmentation on the host (decode, crop, resize, batch: what
`augment_on=host` feeds), and of the host's part of device augmentation
(decode and batch uint8), each also per host core used (the worker
processes, or the training process itself with 0 workers); and the jitted
device augmentation alone.
"""
import statistics
import time

import jax
import numpy as np

from sgan_jax import dataset_builders, device_augment, input_pipeline, sharding


def loader_images_per_s(config, builder, workers: int, batches: int,
                        on_device: bool = False) -> float:
  """The training loader alone (`input_pipeline.loader`), in images/s
  over `batches` batches after the first (start-up is not throughput)."""
  data = input_pipeline.records(config, builder, config.train_split)
  stream = input_pipeline.train_batch_keys(config, data, on_device, 0, 1)
  iterator = iter(input_pipeline.loader(stream, workers))
  try:
    next(iterator)
    t0 = time.perf_counter()
    for _ in range(batches):
      next(iterator)
    seconds = time.perf_counter() - t0
  finally:
    input_pipeline.close_loader(iterator)
  return batches * config.global_batch_size / seconds


def device_augment_images_per_s(config, source_shape, calls: int = 20) -> float:
  """`sgan_jax.device_augment` alone on this backend's devices, in images/s, on a
  global batch of uint8 images of `source_shape` (H, W, C)."""
  mesh = sharding.make_mesh()
  images = jax.device_put(
      np.random.default_rng(0).integers(0, 256, (config.global_batch_size,) + tuple(source_shape),
                                        dtype=np.uint8), sharding.batch_sharding(mesh))
  fn = device_augment.jitted(0, config.image_size, sharding.batch_sharding(mesh))
  fn(images, 0).block_until_ready()
  times = []
  for i in range(calls):
    t0 = time.perf_counter()
    fn(images, i + 1).block_until_ready()
    times.append(time.perf_counter() - t0)
  return config.global_batch_size / statistics.median(times)


def pipeline_figures(config, batches: int, worker_counts, step_images_per_s: float):
  """Every pipeline figure as a flat dict (nothing measured if `batches` is 0
  or the dataset is unavailable: the note says why)."""
  out = {"pipeline_note": "skipped (--pipeline_batches=0)"}
  if not batches:
    return out
  try:
    builder = dataset_builders.get_builder(config)
  except Exception as e:  # no data here: say so, go on with the step's figures
    return {"pipeline_note": f"not measured: {type(e).__name__}: {e}"[:300]}
  shape = input_pipeline.fixed_image_shape(builder)
  out["pipeline_note"] = (f"{config.dataset} {config.data_dir}".strip()
                          + f", images {shape or 'of varying sizes'}, "
                          f"batch {config.global_batch_size}, {batches} batches")
  for workers in worker_counts:
    cores = max(workers, 1)
    kinds = [("host_augment", False)] + ([("uint8", True)] if shape else [])
    for name, on_device in kinds:
      rate = loader_images_per_s(config, builder, workers, batches, on_device)
      out[f"pipeline_{name}_w{workers}_images_per_s"] = rate
      out[f"pipeline_{name}_w{workers}_per_core"] = rate / cores
  if shape:
    out["device_augment_images_per_s"] = device_augment_images_per_s(config, shape)
  fastest = max(v for k, v in out.items() if k.endswith("images_per_s")
                and k.startswith("pipeline_"))
  out["pipeline_to_step_ratio"] = fastest / step_images_per_s
  return out
