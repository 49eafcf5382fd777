"""Entry point that runs every stage in order: `jobs/run_pipeline.py [options]`.

Takes the options of `behaviorgpt run --help`; training is started with torchrun from here.
"""

import sys

from behaviorgpt.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
