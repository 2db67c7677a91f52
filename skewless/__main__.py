"""`python -m skewless ...` is the `skewless` command."""

from skewless.cli import main

main()
