"""Evaluation of D's features (docs/method.md §6): extraction, scoring by the
evaluators in `sgan_jax.evaluators`, the results table and JSON, the hook that
training calls, and `evaluate_checkpoint` (what `python -m sgan_jax.evaluate`
runs).

Results are a flat map `"<model>/<features>/<evaluator>/<metric>" -> number`,
written as `eval_<step>.json` (see README).

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

from sgan_jax import (checkpointing, curves, dataset_builders, errors, evaluators,
                      fid, generator_eval, image_ops, input_pipeline, progress, sharding,
                      storage)
from sgan_jax.state import (StepSpec, abstract_train_state, init_discriminator,
                            init_generator)

MODELS = ("d_ema", "d", "random_init", "raw_pixels")
PIXEL_EVALUATORS = ("knn", "linear", "svm")
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


def run_evaluators(config, train_split, test_split, models=MODELS,
                   include=None, check_stop: Callable[[], None] = _keep_going
                   ) -> Dict[str, float]:
  """Scores features; `train_split`/`test_split` are `extract_features` results.

  `include` optionally restricts the models evaluated (to reuse cached
  baselines); `check_stop()` runs before every evaluator.
  """
  (y_train, pixels_train, feats_train), (y_test, pixels_test, feats_test) = (
      train_split, test_split)
  jobs, out = [], {}
  for model in models:
    if include is not None and model not in include:
      continue
    if model == "raw_pixels":
      sets = {"pixels": (baseline_pixels(pixels_train, config.image_size),
                         baseline_pixels(pixels_test, config.image_size))}
      names = [n for n in PIXEL_EVALUATORS if n in config.eval.evaluators]
    else:
      sets = {f: (feats_train[model][f], feats_test[model][f])
              for f in ("backbone", "embedding")}
      names = [n for n in evaluators.NAMES if n in config.eval.evaluators]
      if model != "random_init":   # the online probe trained with D
        out[f"{model}/backbone/online_probe/top1"] = float(
            np.mean(feats_test[model]["probe_pred"] == y_test))
    jobs += [(model, feature, name, xs) for feature, xs in sets.items() for name in names]
  report = progress.Progress("  evaluators", len(jobs), "fits", every=0.0)
  for model, feature, name, (train_x, test_x) in jobs:
    check_stop()
    t0 = time.time()
    scores = evaluators.get(name)((train_x, y_train), (test_x, y_test),
                                  config.num_classes, config.eval)
    out.update({f"{model}/{feature}/{name}/{k}": v for k, v in scores.items()})
    logging.info("  %s %s %s: %s (%.1f s)", model, feature, name, ", ".join(
        f"{k} {v:.4f}" for k, v in scores.items()), time.time() - t0)
    report.update()
  return out


GENERATOR_ROWS = ("g_ema", "random_init", "real_train", "real_test")


def format_table(results: Dict[str, float]) -> str:
  """D's features: one row per (model, features), one column per evaluator
  metric; then G's metrics (`gen/*`), one row per image set."""
  columns = ["knn/top1", "linear/top1", "svm/top1", "kmeans/acc", "kmeans/nmi",
             "kmeans/ari", "online_probe/top1"]
  rows = sorted({tuple(k.split("/")[:2]) for k in results if not k.startswith("gen/")},
                key=lambda r: (MODELS.index(r[0]), r[1]))
  cell = lambda v: f"{'-' if v is None else f'{v:.4f}':>17}"
  head = f"{'model':<12} {'features':<10} " + " ".join(f"{c:>17}" for c in columns)
  lines = [head, "-" * len(head)]
  for model, feature in rows:
    lines.append(f"{model:<12} {feature:<10} " + " ".join(
        cell(results.get(f"{model}/{feature}/{c}")) for c in columns))
  lines.append("(test split; the k-NN bank, the linear probe and the SVM use the "
               "train split)")
  if "gen/classifier/test_top1" in results:
    gen_columns = ["classifier_fd", "classifier_score"]
    if any(k.endswith("/fid") for k in results):
      gen_columns += ["fid", "inception_score"]
    lines += ["", f"{'G / images':<23} " + " ".join(f"{c:>17}" for c in gen_columns)]
    lines += [f"{row:<23} " + " ".join(cell(results.get(f"gen/{row}/{c}"))
                                       for c in gen_columns) for row in GENERATOR_ROWS]
    lines.append(f"(classifier_*: against the test split, in the features of a small "
                 f"classifier trained on the train split, test top-1 "
                 f"{results['gen/classifier/test_top1']:.4f}; not FID"
                 + ("; fid: InceptionV3, against the train split)" if "fid" in gen_columns
                    else ")"))
  return "\n".join(lines)


def results_path(workdir: storage.PathLike, step: int):
  return storage.path(workdir) / f"eval_{step}.json"


def write_json(results: Dict[str, float], workdir: storage.PathLike, step: int):
  path = results_path(workdir, step)
  if jax.process_index() == 0:
    storage.write_json(path, results)
  return path


def read_json(workdir: storage.PathLike, step: int) -> Optional[Dict[str, float]]:
  """The results of `eval_<step>.json` in `workdir`, or None if there is none."""
  path = results_path(workdir, step)
  return storage.read_json(path) if storage.exists(path) else None


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
      random_g = jax.jit(init_generator, static_argnums=0)(spec, key)   # eager: ~17 s
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
    include = None if self._baseline is None else ("d_ema", "d")
    results = run_evaluators(self.config, *splits, include=include,
                             check_stop=self.check_stop)
    if self._baseline is None:
      self._baseline = {k: v for k, v in results.items()
                        if k.split("/")[0] in ("random_init", "raw_pixels")}
    results.update(self._baseline)
    if self.config.eval.generator_metrics:
      results.update(self._generator_results(state, splits))
    write_json(results, self.workdir, step)
    if jax.process_index() == 0:
      curves.plot(self.workdir)
    self.last_table = format_table(results)
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
  return [s for s in steps if read_json(output_dir or workdir, s) is None]


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
