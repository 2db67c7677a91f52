"""`python -m batch ...` is `skewless score ...`, for schedulers."""

from training.cli import main

main(["score", *__import__("sys").argv[1:]], prog_name="python -m batch")
