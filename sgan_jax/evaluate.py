"""Command line: evaluate a training workdir's checkpoint again.

`python -m sgan_jax.evaluate --workdir=DIR [--step=N | --all_steps]
 [--output_dir=OUT] [--config.eval.knn_k=20]`

Reads the config DIR's run was last started with (`config.json`, or the
newest `config_resume_<step>.json`), validated; applies the `--config.*`
overrides; restores the checkpoint read-only (`evaluation.evaluate_checkpoint`),
prints the table and writes `eval_<step>.json` and `learning_curve.png` to
OUT (default: DIR). `--all_steps` evaluates every kept checkpoint that has no
`eval_<step>.json` in OUT yet (baselines once), for a learning curve. DIR and
OUT may be cloud-storage URLs.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402  (after the TF log level)
from ml_collections import config_flags  # noqa: E402

from sgan_jax import (checkpointing, cli, config_lib, errors,  # noqa: E402
                      evaluation, progress, reporting, storage)

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A training workdir (with config.json "
                    "and checkpoints/).")
flags.DEFINE_integer("step", None, "Checkpoint step; default: the newest.")
flags.DEFINE_bool("all_steps", False, "Evaluate every kept checkpoint without "
                  "an eval_<step>.json yet, then draw learning_curve.png.")
flags.DEFINE_string("output_dir", None, "Where eval_<step>.json goes; default: "
                    "the workdir. Checkpoints are only ever read.")
cli.define_config_overrides(
    "config", config_lib.reference_config(),
    "Overrides of the workdir's config, e.g. --config.eval.knn_k=20.")
cli.define_compilation_cache_flag()
flags.mark_flag_as_required("workdir")

ERRORS = {
    # A user error (config, data, a missing checkpoint, an output folder that
    # cannot be written): one line, nothing computed.
    errors.UserError: cli.USER_ERROR,
    checkpointing.CheckpointError: cli.USER_ERROR,
    # An I/O failure during the evaluation (checkpoints are only ever read).
    OSError: cli.RUN_STOPPED,
}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  progress.quiet_library_logs()
  cache = cli.use_compilation_cache(FLAGS.compilation_cache_dir)
  with cli.exit_on(ERRORS):
    config = config_lib.read_run_config(FLAGS.workdir)
    config.update_from_flattened_dict(
        config_flags.get_override_values(FLAGS["config"]))
    config_lib.validate(config)
    if FLAGS.all_steps and FLAGS.step is not None:
      raise errors.ConfigError("--step and --all_steps exclude each other")
    steps = [FLAGS.step]
    if FLAGS.all_steps:
      steps = evaluation.missing_steps(FLAGS.workdir, FLAGS.output_dir)
      print(f"{len(steps)} checkpoint(s) to evaluate: {steps}", flush=True)
    done = evaluation.evaluate_checkpoints(config, FLAGS.workdir, steps,
                                           FLAGS.output_dir)
  out = FLAGS.output_dir or FLAGS.workdir
  if done:
    print(reporting.format_table(done[-1][1]))
  for step, _ in done:
    print(f"wrote {reporting.results_path(out, step)}")
  # Each evaluation redraws the curve; with nothing new, draw it from the
  # results already there.
  curve = storage.path(out) / reporting.CURVE_FILE if done else reporting.plot_curves(out)
  if curve is not None:
    print(f"wrote {curve}")
  if cache is not None:
    print(cache.summary())


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
