"""Entry point of the score stage for spark-submit or python: `jobs/score.py [options]`.

Takes the options of `behaviorgpt score --help`.
"""

import sys

from behaviorgpt.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
