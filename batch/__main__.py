"""`python -m batch ...` is `skewless score ...`, for schedulers that call modules, not scripts."""

import sys

from skewless.cli import main

main(["score", *sys.argv[1:]], prog_name="python -m batch")
