"""`skewless train`: a point-in-time training set from a FeatureService, an XGBoost model, a bundle."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from skewless.paths import REPO_DIR


@click.command()
@click.option("--as-of", "as_of", default=None, help="Train as of this time (ISO 8601): only labels whose 30-day outcome was known by then.")
@click.option("--model-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Where bundles go (default: models/, or SKEWLESS_MODEL_DIR).")
@click.option("--repo", type=click.Path(exists=True, file_okay=False, path_type=Path), default=REPO_DIR, show_default=True)
@click.option("--max-rows", type=int, default=1_000_000, show_default=True, help="Sample whole customers down to about this many label rows (0: all).")
@click.option("--feature-service", default="churn_v1", show_default=True, help="The contract: churn_v1, or churn_v2 (churn_v1 and the live account features).")
def train(as_of: str | None, model_dir: Path | None, repo: Path, max_rows: int, feature_service: str) -> None:
    """Build a point-in-time training set from a FeatureService, train XGBoost, write a bundle."""
    from skewless.times import parse_time

    when = parse_time(as_of) if as_of else None

    from skewless.bundle import DEFAULT_MODEL_DIR
    from skewless.store import open_store
    from training.train import train as run

    started = time.perf_counter()
    with tqdm_steps(4) as step:
        result = run(open_store(repo), repo, model_dir or DEFAULT_MODEL_DIR, when, max_rows or None, step=step, feature_service=feature_service)
    m, b = result.metrics, result.bundle
    click.echo(f"trained {b.name}/{b.version} on {b.feature_service} ({len(b.features)} features) in {time.perf_counter() - started:.1f}s")
    w = b.manifest["training_window"]
    click.echo(f"  rows: train {result.rows['train']:,} (labels {w['train_labels'][0][:10]}..{w['train_labels'][1][:10]}), "
               f"validation {result.rows['validation']:,} (labels {w['validation_labels'][0][:10]}..{w['validation_labels'][1][:10]})")
    click.echo(f"  {'':22}{'ROC-AUC':>8}{'PR-AUC':>8}{'logloss':>9}")
    for label, key in (("model (xgboost)", "model"), ("baseline (logistic)", "baseline_logistic"), ("ceiling (true hazard)", "ceiling_true_hazard")):
        r = m[key]
        click.echo(f"  {label:22}{r['roc_auc']:8.3f}{r['pr_auc']:8.3f}{r['log_loss']:9.4f}")
    click.echo(f"  decision threshold {b.threshold:.3f} (best F1 on validation); steps: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.seconds.items()))
    sc = b.manifest["scorer"]
    click.echo(f"  scored by skewless/trees.py: {sc['bit_equal_to_xgboost']:.2%} of {sc['rows_compared_with_xgboost']:,} validation "
               f"probabilities bit-equal to XGBoost's own (largest difference {sc['max_abs_difference']:.2g})")
    click.echo(f"  bundle: {b.path}")


class tqdm_steps:
    """A progress bar over named steps: `with tqdm_steps(n) as step: step("name")`."""

    def __init__(self, total: int):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc="starting", file=sys.stderr, disable=None, bar_format="{desc:<40} {n}/{total} [{elapsed}]")
        self.started = False

    def __enter__(self):
        return self

    def __call__(self, name: str) -> None:
        if self.started:
            self.bar.update(1)
        self.started = True
        self.bar.set_description_str(name)

    def __exit__(self, *exc) -> None:
        if self.started and exc[0] is None:
            self.bar.update(1)
        self.bar.close()
