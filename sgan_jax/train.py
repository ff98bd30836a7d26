"""The training loop: `train_and_evaluate(config, workdir)`.

Resumes from the workdir's newest checkpoint (or starts fresh), runs the
jitted step (`sgan_jax.step`) over the input pipeline, under
`jax.transfer_guard("disallow")` (an implicit transfer between host and device
is an error; the batches arrive on the device), and at the configured
intervals (clu's periodic actions) logs metrics, writes G_ema sample grids,
saves checkpoints and evaluates D's features (`sgan_jax.evaluation`). Stop signals and non-finite
values are handled as `sgan_jax.guards` describes: nothing non-finite is ever
saved, and a stop request ends the run with a checkpoint.
"""
import time

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sgan_jax import (checkpointing, config_lib, dataset_builders, errors, evaluation, fid,
                      guards, input_pipeline, metric_io, processes, profiling, progress,
                      reporting, samples, sharding, storage)
from sgan_jax.state import TrainState, abstract_train_state, create_train_state
from sgan_jax.step import make_train_step

_PROGRESS_KEYS = (("d_loss", "d/loss"), ("g_loss", "g/loss"),
                  ("jsd", "d/jsd"), ("real_sim", "d/real_sim"),
                  ("fake_sim", "d/fake_sim"), ("sigma", "d/sigma_mean"),
                  ("probe_acc", "d/probe_acc"))


def _progress_line(step, total, images_per_s, seconds_left, metrics):
  eta = time.strftime("%H:%M:%S", time.gmtime(max(seconds_left, 0)))
  losses_str = " ".join(f"{short} {metrics[key]:.4f}"
                        for short, key in _PROGRESS_KEYS if key in metrics)
  return (f"step {step}/{total} ({100 * step / total:.0f}%) | "
          f"{images_per_s:.1f} img/s | ETA {eta} | {losses_str}")


_JOBS = ("log", "sample", "checkpoint", "eval")


def _periodic(config, kind: str, callback_fn):
  """clu's periodic action for the job `kind` (one of `_JOBS`): due every
  `<kind>_every_steps` steps and at the last step. Called after each step, in
  order (`action(step, state=...)`), it runs `callback_fn(step=, t=, state=)`
  when the job is due and returns whether it did; the first call after a
  (re)start may be at any step."""
  # Imported here, after metric_io (imported above) has loaded clu's metric
  # writers without TensorFlow: periodic_actions imports them, and on its
  # own would load TensorFlow with them.
  from clu import periodic_actions  # pylint: disable=import-outside-toplevel
  return periodic_actions.PeriodicCallback(
      every_steps=config[f"{kind}_every_steps"], on_steps=[config.num_train_steps],
      callback_fn=callback_fn)


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: storage.PathLike) -> TrainState:
  """Trains `config` in `workdir` (a local path or a cloud-storage URL),
  resuming from its newest checkpoint.

  Writes the run's configs (`config.json`, `config_resume_<step>.json`),
  `checkpoints/<step>`, `metrics.jsonl`, TensorBoard events,
  `samples/samples_<step>.png` and `eval_<step>.json` (evaluation every
  `eval_every_steps` and at the end) into `workdir`. Stops early, with a
  checkpoint, on SIGTERM/SIGINT; never saves a non-finite state (see
  `guards`). Returns the final state; raises `guards.StopRequested` when a
  stop comes before the first step (nothing new to save).
  """
  progress.show_info_logs()
  mesh = sharding.make_mesh()
  config_lib.validate(config, jax.process_count(), jax.device_count())
  with guards.StopSignals() as stop:
    with errors.startup_io("cannot set up the run"):
      storage.makedirs(workdir)
      builder = dataset_builders.get_builder(config)   # fails fast if unavailable
      on_device = input_pipeline.augments_on_device(config, builder)   # ... or unsuited
      logging.info("Augmenting on the %s; %d loader worker processes",
                   "device" if on_device else "host", input_pipeline.worker_count(config))
      stop.raise_if_requested("while preparing the dataset")
      processes.check_same_storage(workdir, dataset_builders.dataset_identity(builder))
      dataset_builders.check_classes(config, builder, workdir,
                                   write=jax.process_index() == 0)
      fid.check_weights(config)
      ckpt = checkpointing.Checkpointer(workdir, config.keep_checkpoints)
      if jax.process_index() == 0:
        _keep_config(config, workdir, ckpt.latest_step())
      logger = metric_io.MetricsLogger(workdir)
    trainer = _Trainer(config, workdir, mesh, builder, ckpt, logger, stop)
    try:
      state = _train_with_rollbacks(config, mesh, trainer)
    except BaseException:
      # Report the first error; one from closing (e.g. the same full disk
      # failing the save in flight) would only hide it.
      for closer in (ckpt.close, logger.close):
        try:
          closer()
        except Exception as e:  # pylint: disable=broad-except
          logging.error("while stopping: %s", e)
      raise
    ckpt.close()
    logger.close()
  return state


def _keep_config(config, workdir, latest_step):
  """Writes this start's config; a resume with changed settings says which."""
  changes = config_lib.changes_since_last_start(config, workdir) if latest_step else []
  path = config_lib.write_run_config(config, workdir, latest_step or 0)
  if changes:
    logging.warning("Resuming at step %d with %d setting(s) changed since the last "
                    "start (kept in %s): %s", latest_step, len(changes), path.name,
                    "; ".join(changes))


def _train_with_rollbacks(config, mesh, trainer) -> TrainState:
  """Resume or start, train; on a non-finite step, roll back if allowed."""
  rollbacks_left, ckpt = config.nonfinite_rollbacks, trainer.ckpt
  while True:
    data_state = None
    if ckpt.latest_step() is not None:
      state = ckpt.restore(abstract_train_state(config, mesh))
      data_state = ckpt.restore_data_state(int(state.step))
      logging.info("Resumed from %s at step %d%s", ckpt.directory, int(state.step),
                   "" if data_state is not None else " (the checkpoint has no "
                   "data-loader state: the data order starts anew)")
    else:
      state = create_train_state(config, jax.random.PRNGKey(config.seed), mesh)
    trainer.logger.resume_at(int(state.step))
    trainer.stop.raise_if_requested("while starting")
    try:
      return trainer.run(state, data_state)
    except guards.NonFiniteError as e:
      if rollbacks_left <= 0:
        raise
      rollbacks_left -= 1
      trainer.skip_steps.add(e.step)
      ckpt.wait()   # the last good checkpoint may still be being written
      logging.warning("%s\nRolling back to the last checkpoint and skipping "
                      "the batch of step %d (%d rollbacks left).",
                      e, e.step, rollbacks_left)


class _Trainer:
  """The loop body: steps, and the periodic logging, samples, checkpoints and
  evaluation, with every check done before anything is written."""

  def __init__(self, config, workdir, mesh, builder, ckpt, logger, stop):
    self.config, self.workdir, self.mesh, self.builder = config, workdir, mesh, builder
    self.ckpt, self.logger, self.stop = ckpt, logger, stop
    self.train_step = make_train_step(mesh)
    self.evaluate = evaluation.TrainingEvaluator(config, builder, mesh, workdir,
                                                 stop.raise_if_requested)
    self.skip_steps = set()   # steps whose batch is skipped after a rollback

  def run(self, state: TrainState, data_state=None) -> TrainState:
    """Trains from `state` (its loader at `data_state`) to the last step."""
    batches = None
    try:
      batches = input_pipeline.TrainBatches(self.config, self.builder, self.mesh,
                                            int(state.step), data_state)
      return self._run(state, batches)
    finally:
      if batches is not None:
        batches.close()

  def _run(self, state: TrainState, batches) -> TrainState:
    config, total = self.config, self.config.num_train_steps
    self._batches = batches
    start = int(state.step)
    self._sample_z = samples.fixed_latents(state.spec, config.seed)
    try:
      self._catch_up(state)
    except guards.StopRequested:
      return self._stop(state, saved=True)
    if start >= total:
      logging.info("Nothing to do: the checkpoint is at step %d of %d", start, total)
    jobs = {kind: _periodic(config, kind, getattr(self, f"_{kind}")) for kind in _JOBS}
    self._pending, self._unchecked = [], []
    self._t0, self._last_logged = time.time(), start
    for step in range(start + 1, total + 1):
      batch = next(batches)
      if step in self.skip_steps:
        batch = next(batches)
      with jax.transfer_guard("disallow"):   # an implicit host transfer is an error
        state, metrics = self.train_step(state, batch)
      self._pending.append(metrics)
      self._unchecked.append((step, metrics))
      if step == start + 1:   # time steps, not compilation
        jax.block_until_ready(metrics)
        self._t0, self._last_logged = time.time(), step
        logging.info("Step %d done, %.1f s after the process started (imports, "
                     "dataset, initialisation and compilation included)", step,
                     profiling.seconds_since_process_start())
      stopping = self.stop.check()
      if stopping:
        self._raise_if_nonfinite()
      jobs["log"](step, state=state)
      jobs["sample"](step, state=state)
      saved = jobs["checkpoint"](step, state=state)
      if stopping:
        return self._stop(state, saved=saved)
      try:
        jobs["eval"](step, state=state)
      except guards.StopRequested:
        return self._stop(state, saved=saved)
    self.ckpt.wait()
    self.logger.flush()
    return state

  def _raise_if_nonfinite(self):
    """Checks the metrics of the steps since the last check (before anything
    is written): raises NonFiniteError naming the first non-finite one."""
    bad = guards.first_nonfinite(self._unchecked)
    if bad is not None:
      raise guards.NonFiniteError(*bad)
    self._unchecked = []

  # The periodic jobs (`_periodic` calls them when due), in the order they run.

  def _log(self, step: int, t: float, state: TrainState):
    """Writes the means of the metrics since the last log, and the progress line."""
    del t, state
    self._raise_if_nonfinite()
    total = self.config.num_train_steps
    means = {k: float(np.mean(v)) for k, v in jax.device_get(
        jax.tree.map(lambda *m: jnp.stack(m), *self._pending)).items()}
    rate = max(step - self._last_logged, 1) / (time.time() - self._t0)
    means["images_per_second"] = rate * self.config.global_batch_size
    self.logger.scalars(step, means)
    logging.info(_progress_line(step, total, means["images_per_second"],
                                (total - step) / rate, means))
    self._pending, self._t0, self._last_logged = [], time.time(), step

  def _sample(self, step: int, t: float, state: TrainState):
    """Writes G_ema's sample grid of the fixed latents."""
    del step, t
    self._raise_if_nonfinite()
    samples.save_samples(state, self._sample_z, self.workdir, self.logger)

  def _checkpoint(self, step: int, t: float, state: TrainState):
    """Saves `state` with the loader's state (in the background)."""
    del step, t
    self._raise_if_nonfinite()
    self.ckpt.save(state, self._batches.state)

  def _eval(self, step: int, t: float, state: TrainState):
    """Evaluates D's features (raises StopRequested on a stop request)."""
    del t
    self._raise_if_nonfinite()
    self.evaluate(state, step, self.logger)

  def _catch_up(self, state):
    """At a (re)start: the sample grid and evaluation due at the restored step
    that the previous run did not finish (e.g. killed during the final
    evaluation)."""
    step = int(state.step)
    if step == 0:
      return
    if (_periodic(self.config, "sample", lambda **_: None)(step)
        and not storage.exists(samples.samples_path(self.workdir, step))):
      samples.save_samples(state, self._sample_z, self.workdir, self.logger)
    if (_periodic(self.config, "eval", lambda **_: None)(step)
        and reporting.read_results(self.workdir, step) is None):
      logging.info("Evaluating the restored step %d (its evaluation did not finish).", step)
      self.evaluate(state, step, self.logger)

  def _stop(self, state: TrainState, saved: bool) -> TrainState:
    """Ends the run on a stop request, with `state` saved."""
    step = int(state.step)
    if not saved:
      self.ckpt.save(state, self._batches.state, force=True)
    self.ckpt.wait()
    logging.warning("%s received: saved checkpoint %d in %s; exiting.",
                    self.stop.requested, step, self.ckpt.directory)
    return state
