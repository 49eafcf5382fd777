"""Entry point of the retention maintenance for spark-submit or python: `jobs/maintain.py [options]`.

Deletes rows older than `retention.days` before `--date` and runs Delta VACUUM. Takes the
options of `behaviorgpt maintain --help`.
"""

import sys

from behaviorgpt.cli import main

if __name__ == "__main__":
    sys.exit(main(["maintain", *sys.argv[1:]]))
