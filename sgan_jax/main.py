"""Command line: `python -m sgan_jax.main --config=configs/<name>.py --workdir=DIR`.

Parses the flags and calls `train.train_and_evaluate`. Any config field can be
overridden, e.g. `--config.global_batch_size=64`. Config files are Python and
are executed: only pass files you trust.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402  (after the TF log level)
import jax  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from sgan_jax import (checkpointing, cli, errors, guards, reporting,  # noqa: E402
                      sharding, train)

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, samples.")
flags.DEFINE_string("coordinator_address", None, "Multi-process runs: "
                    "host:port of process 0 (with --num_processes, --process_id).")
flags.DEFINE_integer("num_processes", None, "Multi-process runs: process count.")
flags.DEFINE_integer("process_id", None, "Multi-process runs: this process's index.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with "
                  "auto-detected settings (TPU pod slices, SLURM, ...).")
cli.define_compilation_cache_flag()
flags.mark_flags_as_required(["config", "workdir"])

ERRORS = {
    # A user error (config, data, paths and permissions at start-up): say
    # what and how to fix it.
    errors.UserError: cli.USER_ERROR,
    # The run stopped; every checkpoint on disk is complete and finite.
    checkpointing.CheckpointError: cli.RUN_STOPPED,
    guards.NonFiniteError: cli.RUN_STOPPED,
    OSError: cli.RUN_STOPPED,
}


def main(argv):
  cache = cli.start(argv, FLAGS.compilation_cache_dir)
  sharding.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                  FLAGS.process_id, FLAGS.distributed)
  logging.info("JAX %s on %d process(es), devices: %s", jax.__version__,
               jax.process_count(), jax.devices())
  try:
    with cli.exit_on(ERRORS):
      state = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except guards.StopRequested as e:
    logging.warning("%s before the first step: nothing new to save; exiting.", e)
    return
  if cache is not None:
    logging.info(cache.summary())
  step = int(state.step)
  results = reporting.read_results(FLAGS.workdir, step)
  if jax.process_index() == 0 and results is not None:
    print(f"\nEvaluation at step {step} "
          f"({reporting.results_path(FLAGS.workdir, step)}):\n"
          + reporting.format_table(results), flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
