"""Entry point of the quality gate for spark-submit or python: `jobs/gate.py [options]`.

Takes the options of `behaviorgpt gate --help`.
"""

import sys

from behaviorgpt.cli import main

if __name__ == "__main__":
    sys.exit(main(["gate", *sys.argv[1:]]))
