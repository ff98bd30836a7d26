"""Command line: evaluate a training workdir's checkpoint again.

`python -m sgan_jax.evaluate --workdir=DIR [--step=N] [--output_dir=OUT]
 [--config.eval.knn_k=20]`

Reads the config DIR's run was last started with (`config.json`, or the
newest `config_resume_<step>.json`), validated; applies the `--config.*`
overrides; restores the checkpoint read-only (`evaluation.evaluate_checkpoint`),
prints the table and writes `eval_<step>.json` to OUT (default: DIR). DIR and
OUT may be cloud-storage URLs.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402  (after the TF log level)
from ml_collections import config_flags  # noqa: E402

from sgan_jax import (checkpointing, cli, config_lib, evaluation,  # noqa: E402
                      input_pipeline)

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A training workdir (with config.json "
                    "and checkpoints/).")
flags.DEFINE_integer("step", None, "Checkpoint step; default: the newest.")
flags.DEFINE_string("output_dir", None, "Where eval_<step>.json goes; default: "
                    "the workdir. Checkpoints are only ever read.")
cli.define_config_overrides(
    "config", config_lib.reference_config(),
    "Overrides of the workdir's config, e.g. --config.eval.knn_k=20.")
flags.mark_flag_as_required("workdir")

ERRORS = {checkpointing.CheckpointError: cli.USER_ERROR,
          config_lib.ConfigError: cli.USER_ERROR,
          input_pipeline.DatasetUnavailableError: cli.USER_ERROR}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  cli.quiet_library_logs()
  with cli.exit_on(ERRORS):
    config = config_lib.read_run_config(FLAGS.workdir)
    config.update_from_flattened_dict(
        config_flags.get_override_values(FLAGS["config"]))
    config_lib.validate(config)
    step, results = evaluation.evaluate_checkpoint(
        config, FLAGS.workdir, FLAGS.step, FLAGS.output_dir)
  print(evaluation.format_table(results))
  print(f"wrote {evaluation.results_path(FLAGS.output_dir or FLAGS.workdir, step)}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
