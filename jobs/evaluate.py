"""Entry point of the evaluate stage for spark-submit or python: `jobs/evaluate.py [options]`.

Takes the options of `behaviorgpt evaluate --help`.
"""

import sys

from behaviorgpt.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
