"""Entry point of the sessionize stage for spark-submit or python: `jobs/sessionize.py [options]`.

Takes the options of `behaviorgpt sessionize --help`.
"""

import sys

from behaviorgpt.cli import main

if __name__ == "__main__":
    sys.exit(main(["sessionize", *sys.argv[1:]]))
