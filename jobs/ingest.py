"""Entry point of the ingest stage for spark-submit or python: `jobs/ingest.py [options]`.

Takes the options of `behaviorgpt ingest --help`.
"""

import sys

from behaviorgpt.cli import main

if __name__ == "__main__":
    sys.exit(main(["ingest", *sys.argv[1:]]))
