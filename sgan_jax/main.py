"""Command line: `python -m sgan_jax.main --config=configs/<name>.py --workdir=DIR`.

Any config field can be overridden, e.g. `--config.global_batch_size=64`.
Config files are Python and are executed: only pass files you trust.
"""
import json
import logging as std_logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging
import jax
from ml_collections import config_flags

from sgan_jax import (checkpointing, config_lib, evaluate, guards, input_pipeline,
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
flags.mark_flags_as_required(["config", "workdir"])


class _OwnInfoOnly(std_logging.Filter):
  """Keeps INFO lines of sgan_jax; libraries (Orbax, clu, XLA) only warn."""

  def filter(self, record):
    return (record.levelno >= std_logging.WARNING
            or f"{os.sep}sgan_jax{os.sep}" in record.pathname)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.get_absl_handler().addFilter(_OwnInfoOnly())
  sharding.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                  FLAGS.process_id, FLAGS.distributed)
  logging.info("JAX %s on %d process(es), devices: %s", jax.__version__,
               jax.process_count(), jax.devices())
  try:
    state = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (config_lib.ConfigError,
          input_pipeline.DatasetUnavailableError) as e:
    # A user error: say what and how to fix it, without a traceback.
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except (checkpointing.CheckpointError, guards.NonFiniteError, OSError) as e:
    # The run stopped; every checkpoint on disk is complete and finite.
    print(f"error: {e}", file=sys.stderr)
    sys.exit(3)
  step = int(state.step)
  results_path = os.path.join(FLAGS.workdir, f"eval_{step}.json")
  if jax.process_index() == 0 and os.path.exists(results_path):
    with open(results_path) as f:
      print(f"\nFeatures at step {step} ({results_path}):\n"
            + evaluate.format_table(json.load(f)), flush=True)


def _parse_flags(argv):
  """absl's parser, with bad config overrides reported in one line."""
  try:
    return FLAGS(argv)
  except (AttributeError, KeyError) as e:
    name = str(e).strip("\"'")
    print(f"error: unknown config field '{name}' in a --config.* override "
          f"(config fields are listed in README.md)", file=sys.stderr)
    sys.exit(2)
  except (flags.Error, TypeError, ValueError) as e:
    print(f"error: bad command line: {e}\n(see --helpfull for the flags; "
          f"config fields are listed in README.md)", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
