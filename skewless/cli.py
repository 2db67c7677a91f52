"""The `skewless` command: one entry point for every stage of the pipeline.

Stages register their own subcommands (training here, batch/cli.py, online/cli.py). Heavy
imports (Feast, XGBoost) happen inside the commands so `skewless --help` stays fast. Every
expected failure becomes one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import click



class Group(click.Group):
    """Loads each stage's subcommands on first use and turns the errors users cause into
    one-line messages (`Error: ...`, exit 1)."""

    # name -> "module:attribute" of a click command defined by that stage
    lazy: dict[str, str] = {
        "generate": "synthetic.cli:generate",
        "apply": "feast_plugins.apply:apply_command",
        "train": "training.cli:train",
        "score": "batch.cli:score",
        "explain": "batch.cli:explain_command",
        "materialize": "feast_plugins.materialize:materialize_command",
        "serve": "online.cli:serve",
        "api-key": "online.cli:api_key",
        "skew-report": "monitoring.cli:skew_report_command",
        "quality": "monitoring.cli:quality_command",
        "stream": "stream.cli:stream",
        "scheduler": "orchestration.cli:scheduler",
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
@click.argument("version", default="latest")
@click.option("--model-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Where bundles are (default: models/, or SKEWLESS_MODEL_DIR).")
def model(version: str, model_dir: Path | None) -> None:
    """Show a model bundle: version, contract, metrics (VERSION defaults to latest)."""
    from skewless.bundle import DEFAULT_MODEL_DIR, BundleError, load_bundle

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
               else "  metrics scored by XGBoost's predict (a bundle from before the tree walk; scored now by skewless/trees.py)")
