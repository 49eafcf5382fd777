"""Entry point of the train stage for spark-submit: `jobs/train_stage.py [options]`.

Takes the options of `behaviorgpt train --help`. It starts `torchrun` on the node that runs the
driver (submit with `--deploy-mode client` from a GPU node) and records the run in
`pipeline_runs` through the Spark session that spark-submit provides. `jobs/train.py` is the
script that torchrun itself runs on each rank.
"""

import sys

from behaviorgpt.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
