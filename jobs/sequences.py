"""Entry point of the sequences stage for spark-submit or python: `jobs/sequences.py [options]`.

Takes the options of `behaviorgpt sequences --help`.
"""

import sys

from behaviorgpt.cli import main

if __name__ == "__main__":
    sys.exit(main(["sequences", *sys.argv[1:]]))
