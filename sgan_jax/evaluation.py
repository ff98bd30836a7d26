"""Evaluation of a checkpoint (docs/method.md §6): D's features extracted
and scored by the evaluators of `config.eval.evaluators`
(`sgan_jax.evaluators`), G's metrics (`generator_eval`, `fid`), the hook that
training calls, and `evaluate_checkpoints` (what `python -m sgan_jax.evaluate`
runs). The results' names, table, JSON and learning curve are `reporting`'s.

Models: `d_ema` and `d` (the checkpoint's networks), `random_init` (a freshly
initialised D, the "what training bought" baseline) and `raw_pixels`.
Features: `backbone` (h), `embedding` (raw e) and `pixels`. Metrics are
measured on the test split; the k-NN bank and the linear models use the train
split.
"""
import functools
import time
from typing import Callable, Dict, Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from sgan_jax import (checkpointing, dataset_builders, errors, evaluators, fid,
                      generator_eval, image_ops, input_pipeline, progress, reporting,
                      sharding, storage)
from sgan_jax.state import (StepSpec, abstract_train_state, init_discriminator,
                            init_generator)

PIXEL_EVALUATORS = ("knn", "linear", "svm")   # k-means is not run on raw pixels
# The raw-pixel baseline sees the test view area-averaged to at most this
# side (3,072 values at 32x32): at 64x64 and 126,689 ImageNet-100 images the
# full-size rows alone would take 6.2 GB in float32.
PIXEL_SIDE = 32


def _as_uint8(images: np.ndarray) -> np.ndarray:
  """[-1, 1] images as uint8 rows [N, H*W*3] (a quarter of float32's bytes;
  the rounding is below what an 8-bit image holds anyway)."""
  return np.round((images + 1.0) * 127.5).clip(0, 255).astype(np.uint8).reshape(
      images.shape[0], -1)


def images_of(pixels: np.ndarray, size: int) -> np.ndarray:
  """`extract_features`' uint8 rows as float32 images [N, size, size, 3] in [-1, 1]."""
  return image_ops.to_unit_range(pixels.reshape(-1, size, size, 3))


def baseline_pixels(pixels: np.ndarray, size: int) -> np.ndarray:
  """The raw-pixel baseline's features: the images, each block of f x f
  pixels averaged (f = size / PIXEL_SIDE, if above 1), as float32 rows in
  [-1, 1]."""
  f = max(1, size // PIXEL_SIDE)
  side = size // f
  blocks = pixels.reshape(-1, side, f, side, f, 3).astype(np.float32)
  return image_ops.to_unit_range(blocks.mean(axis=(2, 4))).reshape(len(pixels), -1)


@functools.partial(jax.jit, static_argnums=0)
def _d_features(spec: StepSpec, params, images):
  out = spec.discriminator().apply({"params": params}, images)
  return out.backbone, out.raw_embedding, jnp.argmax(out.probe_logits, -1)


def random_init_params(spec: StepSpec, seed: int, mesh):
  """A freshly initialised D (the same architecture, never trained),
  replicated over `mesh`."""
  key = np.asarray(jax.random.fold_in(jax.random.PRNGKey(seed), 0xD1))
  init = functools.partial(init_discriminator, spec)
  return jax.jit(init, out_shardings=sharding.replicated(mesh))(key)


def _keep_going():
  """The default stop check: never stops."""


def extract_features(spec, named_params: Dict, config, builder, split, mesh,
                     check_stop: Callable[[], None] = _keep_going):
  """Features of every image of `split`, for each model in `named_params`.

  Returns `(labels [N], pixels [N, H*W*3] (uint8, the test view; see
  `images_of`), {model: {"backbone", "embedding", "probe_pred"}})`. Batches are padded to a fixed size and the padding rows
  are dropped by their mask, so no image is ever skipped. `check_stop()` runs
  before every batch (it raises to abandon the extraction).
  """
  bs = config.eval.batch_size
  labels, pixels, feats = [], [], {m: {} for m in named_params}
  batches = input_pipeline.EvalBatches(config, builder, split, bs)
  report = progress.Progress(f"  features of the {split} split ({', '.join(named_params)})",
                             len(batches), "images")
  for batch in batches:
    check_stop()
    full = input_pipeline.pad_to_full_batch(batch, bs)
    mask = full["mask"]
    images = sharding.to_global(sharding.process_rows(
        {"image": full["image"]}, bs), mesh)["image"]
    labels.append(full["label"][mask])
    pixels.append(_as_uint8(full["image"][mask]))
    for model, params in named_params.items():
      outs = [sharding.to_host(o)[mask] for o in _d_features(spec, params, images)]
      for name, value in zip(("backbone", "embedding", "probe_pred"), outs):
        feats[model].setdefault(name, []).append(value)
    report.update(int(mask.sum()))
  cat = lambda parts: np.concatenate(parts) if parts else np.zeros((0,))
  return (cat(labels), cat(pixels),
          {m: {k: cat(v) for k, v in f.items()} for m, f in feats.items()})


def run_evaluators(config, train_split, test_split, models=reporting.MODELS,
                   include=None, check_stop: Callable[[], None] = _keep_going
                   ) -> Dict[str, float]:
  """Scores features; `train_split`/`test_split` are `extract_features` results.

  `include` optionally restricts the models evaluated (to reuse cached
  baselines); `check_stop()` runs before every evaluator.
  """
  (y_train, pixels_train, feats_train), (y_test, pixels_test, feats_test) = (
      train_split, test_split)
  built = evaluators.from_config(config.num_classes, config.eval)
  jobs, out = [], {}
  for model in models:
    if include is not None and model not in include:
      continue
    if model == "raw_pixels":
      sets = {reporting.PIXELS: (baseline_pixels(pixels_train, config.image_size),
                                 baseline_pixels(pixels_test, config.image_size))}
      names = [n for n in built if n in PIXEL_EVALUATORS]
    else:
      sets = {f: (feats_train[model][f], feats_test[model][f])
              for f in reporting.D_FEATURES}
      names = list(built)
      if model in reporting.TRAINED:   # the online probe trained with D
        (metric,) = evaluators.SCORES[evaluators.ONLINE_PROBE]
        out[f"{model}/backbone/{evaluators.ONLINE_PROBE}/{metric}"] = float(
            np.mean(feats_test[model]["probe_pred"] == y_test))
    jobs += [(model, feature, name, xs) for feature, xs in sets.items() for name in names]
  report = progress.Progress("  evaluators", len(jobs), "fits", every=0.0)
  for model, feature, name, (train_x, test_x) in jobs:
    check_stop()
    t0 = time.time()
    scores = dict(built[name].run((train_x, y_train), (test_x, y_test)))
    out.update({f"{model}/{feature}/{name}/{k}": v for k, v in scores.items()})
    logging.info("  %s %s %s: %s (%.1f s)", model, feature, name, ", ".join(
        f"{k} {v:.4f}" for k, v in scores.items()), time.time() - t0)
    report.update()
  return out


class TrainingEvaluator:
  """Evaluation during training; the baselines are computed once and cached.
  `check_stop` (e.g. `guards.StopSignals.raise_if_requested`) runs between
  batches and evaluators, to abandon an evaluation when a stop is requested."""

  def __init__(self, config, builder, mesh, workdir: storage.PathLike,
               check_stop: Callable[[], None] = _keep_going):
    self.config, self.builder, self.mesh, self.workdir = config, builder, mesh, workdir
    self.check_stop = check_stop
    self._baseline: Optional[Dict[str, float]] = None
    self._classifier: Optional[generator_eval.ClassifierMetrics] = None
    self._gen_baseline: Dict[str, float] = {}
    self._inception: Optional[fid.InceptionMetrics] = None
    self.last_table = ""

  def _generator_results(self, state, splits) -> Dict[str, float]:
    """G_ema's metrics; on the first call also the reference values (the
    classifier's, real images', random-init G's), kept for later calls."""
    (y_train, pixels_train, _), (y_test, pixels_test, _) = splits
    c, spec = self.config, state.spec
    images = functools.partial(images_of, size=c.image_size)
    sample = functools.partial(generator_eval.generate_images, spec,
                               num=len(y_test), batch=c.global_batch_size, seed=c.seed)
    if self._classifier is None:
      self.check_stop()
      logging.info("  training the classifier of G's metrics (%d epochs)",
                   c.eval.classifier_epochs)
      self._classifier = generator_eval.ClassifierMetrics(c)
      base = self._classifier.fit(images(pixels_train), y_train,
                                  images(pixels_test), y_test)
      key = jax.random.fold_in(jax.random.PRNGKey(c.seed), 0x6A)
      # Jitted: op by op, G's initialisation is many times slower.
      random_g = jax.jit(init_generator, static_argnums=0)(spec, key)
      base.update(self._classifier.score("random_init", sample(*random_g)))
      self._inception = fid.InceptionMetrics.create(c, self.workdir)
      if self._inception is not None:
        self.check_stop()
        self._inception.fit(lambda: images(pixels_train))
        base.update(self._inception.score("real_test", images(pixels_test)))
        base.update(self._inception.score(
            "random_init", sample(*random_g, num=c.eval.fid_num_samples)))
      self._gen_baseline = base
    self.check_stop()
    g_ema = (state.g_ema_params, state.g_state)
    results = self._classifier.score("g_ema", sample(*g_ema))
    if self._inception is not None:
      self.check_stop()
      results.update(self._inception.score("g_ema", sample(*g_ema, num=c.eval.fid_num_samples)))
    return {**results, **self._gen_baseline}

  def __call__(self, state, step: int, logger=None) -> Dict[str, float]:
    t0 = time.time()
    named = {"d_ema": state.d_ema_params, "d": state.d_params}
    if self._baseline is None:
      named["random_init"] = random_init_params(state.spec, self.config.seed,
                                                self.mesh)
    logging.info("Evaluating step %d: features of %s", step, ", ".join(named))
    splits = [extract_features(state.spec, named, self.config, self.builder, s,
                               self.mesh, self.check_stop)
              for s in (self.config.train_split, self.config.test_split)]
    include = None if self._baseline is None else reporting.TRAINED
    results = run_evaluators(self.config, *splits, include=include,
                             check_stop=self.check_stop)
    if self._baseline is None:
      self._baseline = {k: v for k, v in results.items()
                        if k.split("/")[0] in reporting.BASELINES}
    results.update(self._baseline)
    if self.config.eval.generator_metrics:
      results.update(self._generator_results(state, splits))
    reporting.write_results(results, self.workdir, step)
    if jax.process_index() == 0:
      reporting.plot_curves(self.workdir)
    self.last_table = reporting.format_table(results)
    logging.info("Evaluation at step %d (%.1f s):\n%s", step, time.time() - t0,
                 self.last_table)
    if logger is not None:
      logger.scalars(step, {f"eval/{k}": v for k, v in results.items()})
    return results


def evaluate_checkpoint(config, workdir: storage.PathLike, step: Optional[int] = None,
                        output_dir: Optional[storage.PathLike] = None):
  """Restores `workdir`'s checkpoint (newest by default, read-only) and
  evaluates it; `eval_<step>.json` goes to `output_dir` (default: workdir).

  Returns `(step, results)`.
  """
  (step, results), = evaluate_checkpoints(config, workdir, [step], output_dir)
  return step, results


def missing_steps(workdir: storage.PathLike, output_dir: Optional[storage.PathLike] = None):
  """The kept checkpoints of `workdir` that have no `eval_<step>.json` in
  `output_dir` (default: workdir) yet, in increasing order."""
  ckpt = checkpointing.Checkpointer(workdir, 1, read_only=True)
  steps = ckpt.all_steps()
  ckpt.close()
  return [s for s in steps if reporting.read_results(output_dir or workdir, s) is None]


def evaluate_checkpoints(config, workdir: storage.PathLike, steps,
                         output_dir: Optional[storage.PathLike] = None):
  """Evaluates the checkpoints `steps` of `workdir` (None: the newest) in
  turn, read-only, computing the baselines (random-init D and G, raw pixels,
  G's classifier) once; writes each `eval_<step>.json` and the learning curve
  to `output_dir` (default: workdir). Returns `[(step, results)]`."""
  progress.show_info_logs()
  mesh = sharding.make_mesh()
  with errors.startup_io("cannot set up the evaluation"):
    output_dir = storage.check_writable(output_dir or workdir)
    builder = dataset_builders.get_builder(config)
    dataset_builders.check_classes(config, builder, workdir, write=False)
    fid.check_weights(config)
    ckpt = checkpointing.Checkpointer(workdir, config.keep_checkpoints, read_only=True)
  evaluator, done = TrainingEvaluator(config, builder, mesh, output_dir), []
  try:
    for i, step in enumerate(steps):
      state = ckpt.restore(abstract_train_state(config, mesh), step)
      logging.info("Evaluating checkpoint %d (%d of %d)", int(state.step), i + 1, len(steps))
      done.append((int(state.step), evaluator(state, int(state.step))))
  finally:
    ckpt.close()
  return done
