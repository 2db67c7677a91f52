"""The `skewless` command: one entry point for every stage of the pipeline.

Stages register their own subcommands (training here, batch/cli.py, serving/cli.py). Heavy
imports (Feast, XGBoost) happen inside the commands so `skewless --help` stays fast. Every
expected failure becomes one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
from pathlib import Path

import click

from training.paths import REPO_DIR


class Group(click.Group):
    """Loads each stage's subcommands on first use and turns the errors users cause into
    one-line messages (`Error: ...`, exit 1)."""

    # name -> "module:attribute" of a click command defined by that stage
    lazy: dict[str, str] = {
        "score": "batch.cli:score",
        "materialize": "online_store.materialize:materialize_command",
        "serve": "serving.cli:serve",
        "api-key": "serving.cli:api_key",
        "skew-report": "monitoring.cli:skew_report_command",
        "stream": "stream.cli:stream",
        "demo-online": "demo.online:demo_online",
        "demo-summary": "demo.summary:demo_summary",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | {n for n in self.lazy if self._load(n)})

    def get_command(self, ctx: click.Context, name: str):
        return super().get_command(ctx, name) or self._load(name)

    def _load(self, name: str):
        target = self.lazy.get(name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                return None  # that stage is not built yet
            raise

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt):
            raise
        except OSError as exc:
            where = f" {exc.filename}" if exc.filename else ""
            raise click.ClickException(f"cannot use{where}: {exc.strerror or exc}") from exc
        except (ValueError, RuntimeError, LookupError) as exc:
            lines = str(exc).strip().splitlines()
            raise click.ClickException(lines[0] if lines else type(exc).__name__) from exc
        except Exception as exc:
            for module, label in (("duckdb", "DuckDB"), ("feast", "Feast")):  # out of memory, a broken file; an object not registered
                if type(exc).__module__.lstrip("_").startswith(module):
                    lines = str(exc).strip().splitlines()
                    raise click.ClickException(f"{label}: {lines[0] if lines else type(exc).__name__}") from exc
            raise


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """skewless: one Feast feature contract for training, batch scoring and online serving."""


@main.command()
@click.option("--customers", type=int, default=50_000, show_default=True, help="Number of customers (1k tests, 50k demo, 1M/10M benchmarks).")
@click.option("--days", type=int, default=150, show_default=True, help="Days of history to write.")
@click.option("--seed", type=int, default=7, show_default=True, help="Random seed; same seed and --end, same bytes.")
@click.option("--end", default="today", show_default=True, help="When the data ends: `today` (00:00 UTC, reproducible), `now` (what a demo serves at once) or an ISO time.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=REPO_DIR / "data", show_default=True, help="Directory the Parquet sources go to.")
@click.option("--events/--no-events", default=True, show_default=True, help="Also the raw account-event log and the account state folded from it (~70 events a customer).")
def generate(customers: int, days: int, seed: int, end: str, out_dir: Path, events: bool) -> None:
    """Write the synthetic raw sources (profiles, activity, labels) as Parquet."""
    from training.times import data_end

    if customers <= 0:
        raise click.ClickException(f"--customers must be a positive number, got {customers}")
    ends = data_end(end)  # a bad --end is one line before anything heavy is imported

    from tqdm import tqdm

    from training.generate import GenerateConfig, generate as run

    started = time.perf_counter()
    with tqdm(total=customers, unit="customer", unit_scale=True, desc="generate", file=sys.stderr, disable=None) as bar:
        cfg = GenerateConfig(customers=customers, days=days, seed=seed, end=ends, events=events)
        summary = run(cfg, out_dir, progress=bar.update)
    seconds = time.perf_counter() - started
    click.echo(f"wrote {out_dir} in {seconds:.1f}s ({customers / seconds:,.0f} customers/s), data {cfg.start:%Y-%m-%d %H:%M} .. {cfg.end:%Y-%m-%d %H:%M} UTC")
    click.echo(f"  profiles {summary.profile_rows:,} rows, activity {summary.activity_rows:,} rows, labels {summary.label_rows:,} rows"
               + (f", events {summary.event_rows:,}, account states {summary.state_rows:,}" if events else ""))
    for name, size in summary.files.items():
        click.echo(f"  {name}{'/' if '.' not in name else ''}: {size / 1e6:.1f} MB")
    click.echo(f"  30-day churn rate {summary.churn_rate:.1%}; AUC of the true hazard (the ceiling) {summary.ceiling_auc:.3f}")


@main.command()
@click.option("--repo", type=click.Path(exists=True, file_okay=False, path_type=Path), default=REPO_DIR, show_default=True)
def apply(repo: Path) -> None:
    """Register the feature definitions: runs the stock `feast apply` inside the repo."""
    from online_store.redis_server import redis_for_feast

    if not (repo / "data").is_dir():
        raise click.ClickException(f"no data in {repo / 'data'}: run `skewless generate` first")
    with redis_for_feast(must_answer=False):  # `feast apply` touches Redis only to drop removed views
        feast_cli = Path(sys.executable).with_name("feast")
        result = subprocess.run([str(feast_cli), "apply"], cwd=repo, env=dict(os.environ), capture_output=True, text=True)
    if result.returncode != 0:
        lines = [l for l in result.stderr.strip().splitlines() if l.strip()]
        raise click.ClickException(f"feast apply failed: {lines[-1] if lines else 'no output'}")
    for line in result.stdout.splitlines():
        if line.startswith(("Applying", "Deploying", "Created", "Deleting", "Updated")):
            click.echo(line)
    click.echo(f"applied {repo} (registry {repo / 'data' / 'registry.db'})")


@main.command()
@click.option("--as-of", "as_of", default=None, help="Train as of this time (ISO 8601): only labels whose 30-day outcome was known by then.")
@click.option("--model-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Where bundles go (default: models/, or SKEWLESS_MODEL_DIR).")
@click.option("--repo", type=click.Path(exists=True, file_okay=False, path_type=Path), default=REPO_DIR, show_default=True)
@click.option("--max-rows", type=int, default=1_000_000, show_default=True, help="Sample whole customers down to about this many label rows (0: all).")
@click.option("--feature-service", default="churn_v1", show_default=True, help="The contract: churn_v1, or churn_v2 (churn_v1 and the live account features).")
def train(as_of: str | None, model_dir: Path | None, repo: Path, max_rows: int, feature_service: str) -> None:
    """Build a point-in-time training set from a FeatureService, train XGBoost, write a bundle."""
    from training.times import parse_time

    when = parse_time(as_of) if as_of else None

    from training.bundle import DEFAULT_MODEL_DIR
    from training.store import open_store
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
    click.echo(f"  scored by training/trees.py: {sc['bit_equal_to_xgboost']:.2%} of {sc['rows_compared_with_xgboost']:,} validation "
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


@main.command()
@click.argument("version", default="latest")
@click.option("--model-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Where bundles are (default: models/, or SKEWLESS_MODEL_DIR).")
def model(version: str, model_dir: Path | None) -> None:
    """Show a model bundle: version, contract, metrics (VERSION defaults to latest)."""
    from training.bundle import DEFAULT_MODEL_DIR, BundleError, load_bundle

    try:
        b = load_bundle(version, model_dir or DEFAULT_MODEL_DIR)
    except BundleError as exc:
        raise click.ClickException(str(exc)) from None
    m = b.manifest
    click.echo(f"{b.name}/{b.version}  ({b.path})")
    click.echo(f"  contract: FeatureService {b.feature_service} in Feast project {m['feast_project']}, {len(b.features)} features")
    click.echo(f"  features: {', '.join(b.feature_names)}")
    click.echo(f"  label: {m['label']['definition']}")
    for key in ("model", "baseline_logistic", "ceiling_true_hazard"):
        r = m["metrics"][key]
        click.echo(f"  {key:20} ROC-AUC {r['roc_auc']:.3f}  PR-AUC {r['pr_auc']:.3f}  log loss {r['log_loss']:.4f}")
    click.echo(f"  threshold {b.threshold:.3f}; segments " + ", ".join(f"{s['name']}<{s['upper']:.3f}" if s["upper"] else s["name"] for s in b.segments))
    sc = m.get("scorer")  # bundles from before the tree walk: metrics from XGBoost's own predict
    click.echo(f"  metrics scored by {sc['name']}, {sc['bit_equal_to_xgboost']:.2%} bit-equal to XGBoost" if sc
               else "  metrics scored by XGBoost's predict (a bundle from before the tree walk; scored now by training/trees.py)")
