"""`python -m training ...` is the `skewless` command."""

from training.cli import main

main()
