"""`skewless score`: batch scoring as of a time; `skewless score status`: freshness.

`score` is a click group that runs a scoring job when called without a subcommand, so the
everyday form stays short (`skewless score --as-of now`) and the scheduler's check reads as
what it is (`skewless score status --max-age 26h`). Also runnable as `python -m batch ...`.

Every expected failure (unknown model, as-of in the future or before the data, a bad IDs
file, an unwritable output) is one line on stderr and exit code 1, with nothing written.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import click

from skewless.times import parse_time
from skewless.paths import REPO_DIR

MAX_ID = 2**63 - 1


def read_ids(path: Path) -> tuple[list[int], int]:
    """Customer IDs from a file, one per line; returns (unique IDs in file order, duplicates).

    Blank lines, `#` comments and a `customer_id` header line are allowed. Any other line that
    is not a non-negative 64-bit integer makes the whole file invalid (ClickException with the
    count and the first bad line), so a half-right list never scores half the customers.
    Duplicates are not an error: each customer is scored once and the count is reported.
    """
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        raise click.ClickException(f"--customers {path}: no such file") from None
    except IsADirectoryError:
        raise click.ClickException(f"--customers {path}: is a directory, not a file of IDs") from None
    except OSError as exc:
        raise click.ClickException(f"--customers {path}: cannot read it ({exc.strerror or exc})") from None
    ids: list[int] = []
    junk, first_junk = 0, None
    seen_content = False
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if not seen_content and line.lower() == "customer_id":
            seen_content = True
            continue
        seen_content = True
        if line.isascii() and line.isdigit() and int(line) <= MAX_ID:
            ids.append(int(line))
        else:
            junk += 1
            if first_junk is None:
                first_junk = (n, raw.strip()[:40])
    if junk:
        raise click.ClickException(
            f"--customers {path}: {junk:,} line(s) are not customer IDs (first: line {first_junk[0]}: {first_junk[1]!r}); nothing was scored"
        )
    if not ids:
        raise click.ClickException(f"--customers {path}: no customer IDs in the file; nothing was scored")
    unique = list(dict.fromkeys(ids))
    return unique, len(ids) - len(unique)


def _outputs(out_dir: Path | None, db_path: Path | None, parquet_dir: Path | None) -> tuple[Path, Path]:
    from batch.job import DEFAULT_OUT_DIR

    base = out_dir or DEFAULT_OUT_DIR
    return db_path or base / "predictions.duckdb", parquet_dir or base / "predictions"


@click.group(invoke_without_command=True)
@click.option("--as-of", "as_of", default=None, help="Score as of this time: ISO 8601 (UTC when no zone) or `now`. Required unless a subcommand is given.")
@click.option("--customers", "ids_file", type=click.Path(path_type=Path), default=None, help="File of customer IDs, one per line (blank lines, # comments, a customer_id header allowed).")
@click.option("--all-active", is_flag=True, help="All customers active at the as-of time (the default).")
@click.option("--model", "version", default="latest", show_default=True, help="Model version to score with.")
@click.option("--model-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Where bundles are (default: models/, or SKEWLESS_MODEL_DIR).")
@click.option("--repo", type=click.Path(exists=True, file_okay=False, path_type=Path), default=REPO_DIR, show_default=True, help="The Feast repository.")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Output root: DIR/predictions.duckdb and DIR/predictions/churn_predictions/ (default: data/).")
@click.option("--db", "db_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="DuckDB file (overrides --out-dir).")
@click.option("--parquet-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Parquet root holding churn_predictions/ (overrides --out-dir).")
@click.option("--chunk-rows", type=int, default=None, help="Customers per chunk (default 250,000): bounds memory.")
@click.option("--top", "top_n", type=int, default=10, show_default=True, help="Print this many highest-risk customers at the end (0: none).")
@click.option("--summary-json", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Also write the run summary (counts, stage times, peak RSS) as JSON here.")
@click.option("--explain-top", type=click.IntRange(min=0, max=20), default=0, show_default=True, help="Write each explained customer's top K reasons (exact SHAP) to table churn_reasons (0: none).")
@click.option("--explain-segment", "explain_segments", multiple=True, help="With --explain-top: only customers in this risk segment (repeatable, e.g. High); default every customer scored.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True, help="Where the chunks run: this process, or Ray tasks.")
@click.option("--address", default=None, help="With --engine ray: an existing cluster (host:port); without, a local Ray is started and stopped.")
@click.option("--ray-cpus", type=click.IntRange(min=1), default=None, help="With a local Ray: its CPUs (default: this machine's).")
@click.pass_context
def score(ctx, as_of, ids_file, all_active, version, model_dir, repo, out_dir, db_path, parquet_dir, chunk_rows, top_n, summary_json,
          explain_top, explain_segments, engine, address, ray_cpus) -> None:
    """Score customers as of a time into DuckDB (table churn_predictions) and Parquet.

    \b
    skewless score --as-of now                        all active customers, latest model
    skewless score --as-of 2026-10-31T00:00:00Z --customers ids.txt --model <version>
    skewless score --as-of now --explain-top 3 --explain-segment High   reasons of the High segment
    skewless score status --max-age 26h               freshness check (exit 1 when stale)
    """
    if ctx.invoked_subcommand is not None:
        return
    if as_of is None:
        raise click.ClickException("--as-of is required (ISO 8601 time or `now`), or use `skewless score status`")
    if ids_file is not None and all_active:
        raise click.ClickException("give either --customers FILE or --all-active, not both")
    if chunk_rows is not None and chunk_rows <= 0:
        raise click.ClickException(f"--chunk-rows must be a positive number, got {chunk_rows}")
    if top_n < 0:
        raise click.ClickException(f"--top must be 0 or more, got {top_n}")
    if explain_segments and not explain_top:
        raise click.ClickException("--explain-segment goes with --explain-top K")
    if engine != "ray" and (address or ray_cpus):
        raise click.ClickException("--address and --ray-cpus go with --engine ray")
    when = parse_time(as_of)
    if as_of == "now":
        when = when.replace(microsecond=0)  # whole seconds, as the derived features use
    ids, duplicates = (None, 0)
    if ids_file is not None:
        ids, duplicates = read_ids(ids_file)
    db, parquet_root = _outputs(out_dir, db_path, parquet_dir)
    ray = {"address": address, "cpus": ray_cpus} if engine == "ray" else None
    summary, parquet_root, served = _run(repo, model_dir, version, when, ids, db, None if parquet_dir is None and out_dir is None else parquet_root,
                                         chunk_rows, ray, (explain_top, tuple(explain_segments)))
    for warning in summary.warnings:
        click.echo(f"warning: {warning}", err=True)
    if duplicates:
        click.echo(f"warning: {ids_file}: {duplicates:,} duplicate ID(s), each customer scored once", err=True)
    _print_summary(summary, db, parquet_root)
    click.echo(f"  online: {served}")
    if top_n:
        from batch.status import top_customers

        _print_top(top_customers(db, top_n, run_id=summary.run_id), indent="  ")
    if ids is not None:
        click.echo(f"  an ad-hoc run (a list of IDs): `skewless score status` and `score top` follow full runs; see it with `skewless score top --run-id {summary.run_id}`")
    if summary_json is not None:
        summary_json.write_text(json.dumps(summary.to_json() | {"duplicates": duplicates}, indent=2) + "\n")


@click.command("explain")
@click.option("--customer", "customer_id", type=click.IntRange(min=0, max=2**63 - 1), required=True, help="The customer ID.")
@click.option("--as-of", "as_of", default="now", show_default=True, help="Explain the score as of this time: ISO 8601 (UTC when no zone) or `now`.")
@click.option("--top", type=click.IntRange(min=1, max=20), default=5, show_default=True, help="How many reasons.")
@click.option("--model", "version", default="latest", show_default=True, help="Model version.")
@click.option("--model-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Where bundles are (default: models/, or SKEWLESS_MODEL_DIR).")
@click.option("--repo", type=click.Path(exists=True, file_okay=False, path_type=Path), default=REPO_DIR, show_default=True, help="The Feast repository.")
def explain_command(customer_id: int, as_of: str, top: int, version: str, model_dir: Path | None, repo: Path) -> None:
    """Why a customer's churn score is what it is at a time: the top reasons (exact SHAP).

    \b
    skewless explain --customer 42
    skewless explain --customer 42 --as-of 2026-10-31T12:00:00Z --top 3

    Features come from the offline store at the as-of time, as a batch run at that time reads
    them, so the reasons are those of that run's score (and of /predict?explain=true then).
    """
    import pandas as pd

    from batch.retrieval import resolve, stream_features
    from skewless.bundle import DEFAULT_MODEL_DIR, BundleError, load_bundle
    from skewless.explain import explain
    from skewless.score import score
    from skewless.store import open_store

    when = parse_time(as_of)
    if as_of == "now":
        when = when.replace(microsecond=0)
    store = open_store(repo)
    try:
        bundle = load_bundle(version, model_dir or DEFAULT_MODEL_DIR, store=store)
    except BundleError as exc:
        raise click.ClickException(str(exc)) from None
    contract = resolve(store, bundle.feature_service)
    frame = pd.concat(stream_features(store, contract, [customer_id], when))
    if not contract.found(frame).any():
        raise click.ClickException(f"customer {customer_id} has no features at {when.isoformat()} (unknown, or every row past its view's TTL)")
    s = score(bundle, frame)
    why = explain(bundle, frame, top)[0]
    click.echo(f"customer {customer_id} as of {when.isoformat()}: churn probability {s.probability[0]:.4f} ({s.risk_segment[0]}), "
               f"model {bundle.name}/{bundle.version}")
    click.echo(f"  base value {why.base_value:+.4f}, margin {why.margin:+.4f} (log-odds); top {len(why.reasons)} reasons:")
    for r in why.reasons:
        value = "missing" if r.value is None else (f"{r.value:.4g}" if isinstance(r.value, float) else str(r.value))
        click.echo(f"  {r.contribution:+.4f}  {r.direction:6s}  {r.feature} = {value}")


def _run(repo, model_dir, version, when, ids, db, parquet_root, chunk_rows, ray=None, explaining=(0, ())):
    import duckdb
    from tqdm import tqdm

    from batch.job import run_batch
    from batch.outputs import OutputError
    from batch.publish import scores_dir
    from batch.retrieval import DEFAULT_CHUNK_ROWS
    from feast_plugins.redis_server import configured_endpoint, redis_for_feast
    from skewless.bundle import DEFAULT_MODEL_DIR, BundleError, load_bundle
    from skewless.paths import PREDICTIONS_DIR
    from skewless.store import open_store

    with contextlib.ExitStack() as stack:
        # a named Redis must answer before anything is scored: the run is published there after it commits
        endpoint = stack.enter_context(redis_for_feast()) if configured_endpoint() is not None else None
        store = open_store(repo)
        try:
            bundle = load_bundle(version, model_dir or DEFAULT_MODEL_DIR, store=store)
        except BundleError as exc:
            raise click.ClickException(str(exc)) from None
        unknown = sorted(set(explaining[1]) - {s["name"] for s in bundle.segments})
        if unknown:
            raise click.ClickException(f"--explain-segment {', '.join(unknown)}: the model's segments are {', '.join(s['name'] for s in bundle.segments)}")
        served_dir = scores_dir(store)  # where the churn_scores view reads; a run written there is served by ID
        if parquet_root is None:
            parquet_root = served_dir.parent if served_dir is not None else PREDICTIONS_DIR
        _abort_on_sigterm()
        if ray is not None:
            try:
                engine = stack.enter_context(_ray_engine(repo, model_dir or DEFAULT_MODEL_DIR, bundle.version, ray))
            except ConnectionError as exc:
                raise click.ClickException(str(exc)) from None
        with tqdm(unit="customer", unit_scale=True, desc="score", file=sys.stderr, disable=None, leave=False) as bar:
            try:
                summary = run_batch(
                    store, bundle, when, None if ids is None else ids, db, parquet_root, chunk_rows or DEFAULT_CHUNK_ROWS,
                    progress=bar.update, on_total=lambda n: (setattr(bar, "total", n), bar.refresh()),
                    **({"engine": engine} if ray is not None else {}),
                    explain_top=explaining[0], explain_segments=explaining[1],
                )
            except OutputError as exc:
                raise click.ClickException(str(exc)) from None
            except duckdb.Error as exc:
                raise click.ClickException(f"DuckDB failed: {str(exc).strip().splitlines()[0]}") from None
        return summary, parquet_root, _publish(store, summary, bundle, endpoint, served_dir, parquet_root)


def _ray_engine(repo, model_dir, version: str, ray: dict):
    """The Ray engine (batch/ray_engine.py), its progress a line per finished range on stderr."""
    try:
        from batch.ray_engine import RayEngine
    except ImportError as exc:
        raise click.ClickException(f"Ray is not importable ({exc}): `make install` installs the locked ray[data]") from None

    def report(done: int, total: int, rows: int, seconds: float) -> None:
        click.echo(f"  ray: {done}/{total} ranges, {rows:,} customers, {rows / max(seconds, 1e-9):,.0f} rows/s", err=True)

    return RayEngine(repo, model_dir, version, address=ray["address"], cpus=ray["cpus"], report=report)


def _publish(store, summary, bundle, endpoint, served_dir: Path | None, parquet_root: Path) -> str:
    """Load the committed run into the named Redis; one line saying what the online copy now is."""
    from batch.outputs import TABLE
    from batch.publish import publish

    if served_dir is None:
        return "the Feast repo has no scores view (tag kind: scores): scores are in DuckDB and Parquet only"
    if served_dir != parquet_root / TABLE:
        return f"not published: the churn_scores view reads {served_dir}, this run wrote under {parquet_root}"
    if endpoint is None:
        return ("no Redis named (REDIS_URL or SKEWLESS_REDIS): not published for /scores; "
                "`skewless materialize` with a Redis named loads every run's scores")
    try:
        run = publish(store, summary.as_of, bundle.name)
    except Exception as exc:  # the run is committed; only the online copy is behind
        raise click.ClickException(
            f"the run is committed to DuckDB and Parquet, but publishing it to redis {endpoint.where} failed "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}): run `skewless materialize` to load it (safe to repeat)"
        ) from None
    where = f"redis {endpoint.where} db {endpoint.db}"
    if run is None:
        return f"published to {where}; it serves no full run of {bundle.name} yet"
    return f"published to {where}: it serves {run.model_name}/{run.model_version} full run {run.run_id} (as-of {run.as_of:%Y-%m-%d %H:%M:%S} UTC, {run.rows:,} rows)"


def _abort_on_sigterm() -> None:
    """Turn a scheduler's SIGTERM into an orderly abort: the staged run is discarded at once."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, frame):
        raise click.ClickException("terminated (SIGTERM): this run was discarded, the previous results are intact")

    signal.signal(signal.SIGTERM, handler)


def _print_summary(s, db: Path, parquet_root: Path) -> None:
    from batch.outputs import TABLE, RunKey

    n = max(s.customers, 1)
    click.echo(f"scored {s.customers:,} customers as of {s.as_of.isoformat()} with {s.model} (run {s.run_id})")
    click.echo("  by risk segment: " + ", ".join(f"{name} {count:,} ({count / n:.1%})" for name, count in _segments(s)))
    click.echo(
        f"  missing features: {s.with_missing_features:,} customers with at least one missing input; "
        f"{s.with_unseen_category:,} with a category unseen in training (scored as missing)"
    )
    if s.not_found:
        from batch.job import first_ids

        click.echo(f"  not found: {len(s.not_found):,} customers have no features at the as-of time (not scored, as /predict answers 404): "
                   f"{first_ids(s.not_found)}")
    if s.explained:
        from batch.outputs import REASONS_TABLE

        click.echo(f"  explained: {s.explained:,} customers, their top reasons in {db} table {REASONS_TABLE} (run {s.run_id})")
    secs = s.seconds
    retrieve = f"retrieve {secs.get('retrieve', 0):.2f}s"
    parts = [f"{k.split('.', 1)[1].replace('_', '-')} {v:.2f}s" for k, v in secs.items() if k.startswith("retrieve.")]
    if parts:
        retrieve += f" ({', '.join(parts)}; runs a chunk ahead of scoring)"
    stages = [f"customers {secs.get('customers', 0):.2f}s", retrieve] + [f"{k} {secs[k]:.2f}s" for k in ("ray", "score", "write", "commit") if k in secs]
    click.echo("  time: " + ", ".join(stages) + f"; wall {s.wall_seconds:.2f}s, {s.rows_per_second:,.0f} rows/s")
    peaks = ", ".join(f"{k} {v:,.0f}" for k, v in s.peak_rss_mb.items())
    click.echo(f"  peak RSS MB: {peaks}; process {s.process_peak_rss_mb:,.0f}")
    if s.chunk_seconds:  # the Ray engine's tasks
        per_task = sorted(c["rows"] / max(c["retrieve"] + c["score"], 1e-9) for c in s.chunk_seconds)
        workers = {c["pid"]: c["rss_mb"] for c in s.chunk_seconds}
        nodes = {c["node"] for c in s.chunk_seconds}
        click.echo(f"  ray tasks: {len(s.chunk_seconds)} range{'' if len(s.chunk_seconds) == 1 else 's'} on {len(workers)} worker process(es) on {len(nodes)} node(s), median {per_task[len(per_task) // 2]:,.0f} rows/s a task, "
                   f"worker RSS MB max {max(workers.values()):,.0f}")
    key_file = RunKey(*s.model.split("/", 1), s.as_of.replace(tzinfo=None))
    click.echo(f"  outputs: {db} (table {TABLE}), {parquet_root / TABLE / key_file.partition / key_file.file_name}")


def _print_top(top, indent: str = "") -> None:
    """The highest-risk customers of a run, as read back from the churn_predictions table."""
    if top.empty:
        return
    first = top.iloc[0]
    click.echo(f"{indent}top {len(top)} customers by churn probability (table churn_predictions, model {first.model_version}, as-of {first.as_of:%Y-%m-%d %H:%M:%S}, run {first.run_id}):")
    click.echo(f"{indent}  {'customer_id':>12}  {'probability':>11}  {'prediction':>10}  segment")
    for r in top.itertuples():
        click.echo(f"{indent}  {r.customer_id:>12}  {r.churn_probability:>11.3f}  {r.churn_prediction:>10}  {r.risk_segment}")


def _segments(s):
    order = ["Low", "Medium", "High"]
    names = sorted(s.by_segment, key=lambda k: (order.index(k) if k in order else len(order), k))
    return [(name, s.by_segment[name]) for name in names]


@score.command()
@click.option("--max-age", default="26h", show_default=True, help="Fail when the newest full run was scored longer ago than this (e.g. 26h, 90m, 8d).")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Output root holding predictions.duckdb (default: data/).")
@click.option("--db", "db_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="DuckDB file (overrides --out-dir).")
@click.option("--repo", type=click.Path(exists=True, file_okay=False, path_type=Path), default=REPO_DIR, show_default=True, help="The Feast repository (its project names the online copy).")
def status(max_age: str, out_dir: Path | None, db_path: Path | None, repo: Path) -> None:
    """Newest full run per model (as-of, scored-at, rows) in DuckDB and in the online copy; exit 1 when
    older than --max-age, absent, or when the Redis named (REDIS_URL) serves another run.

    Only full runs (every active customer) count: ad-hoc runs over a list of IDs are listed, not counted as fresh.
    """
    from skewless.times import parse_duration

    limit = parse_duration(max_age, "--max-age")

    from batch.outputs import OutputError
    from batch.status import check_freshness

    db, _ = _outputs(out_dir, db_path, None)
    try:
        fresh = check_freshness(db, limit)
    except OutputError as exc:
        raise click.ClickException(str(exc)) from None
    for r in fresh.runs.itertuples():
        mark = "STALE" if r.model_name in fresh.stale else "ok"
        click.echo(f"{mark:5} {r.model_name}/{r.model_version}: full run as-of {r.as_of:%Y-%m-%d %H:%M:%S}, "
                   f"scored {r.scored_at:%Y-%m-%d %H:%M:%S} UTC ({_hours(fresh.now, r.scored_at)} ago), {r.rows:,} rows, run {r.run_id}")
    for r in fresh.ad_hoc.itertuples():
        click.echo(f"      ad-hoc run (not counted as fresh) {r.model_name}/{r.model_version}: as-of {r.as_of:%Y-%m-%d %H:%M:%S}, "
                   f"scored {_hours(fresh.now, r.scored_at)} ago, {r.rows:,} rows, run {r.run_id} (`skewless score top --run-id {r.run_id}`)")
    if fresh.runs.empty:
        what = "only ad-hoc runs" if len(fresh.ad_hoc) else "no batch runs"
        raise click.ClickException(f"{what} in {db}: no full run to be fresh (run `skewless score --as-of now`)")
    behind = _check_online_copy(fresh.runs, repo)
    if fresh.stale:
        raise click.ClickException(f"stale predictions for {', '.join(fresh.stale)}: the newest full run is older than {max_age}")
    if behind:
        raise click.ClickException(behind)


def _runs_in_scores_view(repo: Path, run_ids: list[str]) -> set[str]:
    """Which of `run_ids` have rows in the scores view's source (so they are meant to be served by ID)."""
    import duckdb

    from batch.publish import scores_dir
    from skewless.store import open_store

    source = scores_dir(open_store(repo))
    if source is None or not any(source.glob("**/*.parquet")):
        return set()
    with duckdb.connect() as con:
        found = con.execute("SELECT DISTINCT run_id FROM read_parquet(?, union_by_name = true) WHERE list_contains(?, run_id)",
                            [str(source / "**" / "*.parquet"), run_ids]).fetchall()
    return {r[0] for r in found}


def _check_online_copy(runs, repo: Path) -> str | None:
    """Compare each model's newest full run with the run the named Redis serves; the problem, if any."""
    import yaml

    from feast_plugins.redis_server import configured_endpoint
    from feast_plugins.served_runs import read_runs

    endpoint = configured_endpoint()
    if endpoint is None:
        click.echo("      online copy: not checked (no Redis named: set REDIS_URL to check what /scores serves)")
        return None
    project = yaml.safe_load((repo / "feature_store.yaml").read_text())["project"]
    where = f"redis {endpoint.where} db {endpoint.db}"
    try:
        served = read_runs(endpoint.client(), project)
    except Exception as exc:  # redis errors and refused connections alike: one line
        return f"the online copy cannot be read: {where} ({type(exc).__name__}: {exc})"
    published = _runs_in_scores_view(repo, runs["run_id"].tolist())
    problems = []
    for r in runs.itertuples():
        if r.run_id not in published:
            click.echo(f"      online copy: {r.model_name} run {r.run_id} was written outside the churn_scores view's source: not served by ID")
            continue
        online = served.get(r.model_name)
        if online is not None and online.run_id == r.run_id and online.rows == r.rows:
            click.echo(f"ok    online copy ({where}): {r.model_name} serves the same full run {r.run_id}, {online.rows:,} rows")
            continue
        what = "no full run" if online is None else f"run {online.run_id} (as-of {online.as_of:%Y-%m-%d %H:%M:%S}, {online.rows:,} rows)"
        click.echo(f"BEHIND online copy ({where}): {r.model_name} serves {what}, not the newest full run {r.run_id}")
        problems.append(r.model_name)
    if problems:
        return f"the online copy of {', '.join(problems)} in {where} is not the newest full run: load it with `skewless materialize`"
    return None


def _hours(now, then) -> str:
    return f"{(now - then.to_pydatetime()).total_seconds() / 3600:.1f}h"


@score.command()
@click.option("-n", "--n", "n", type=int, default=10, show_default=True, help="How many customers.")
@click.option("--run-id", default=None, help="Which run (default: the newest full run).")
@click.option("--ad-hoc", is_flag=True, help="The newest ad-hoc run (a list of IDs) instead of the newest full run.")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Output root holding predictions.duckdb (default: data/).")
@click.option("--db", "db_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="DuckDB file (overrides --out-dir).")
def top(n: int, run_id: str | None, ad_hoc: bool, out_dir: Path | None, db_path: Path | None) -> None:
    """The highest-risk customers of the newest full run (or --ad-hoc, --run-id), read from churn_predictions."""
    if n <= 0:
        raise click.ClickException(f"-n must be a positive number, got {n}")
    if run_id and ad_hoc:
        raise click.ClickException("give either --run-id or --ad-hoc, not both")

    from batch.outputs import OutputError
    from batch.status import top_customers

    db, _ = _outputs(out_dir, db_path, None)
    if not db.exists():
        raise click.ClickException(f"no batch runs in {db}: run `skewless score --as-of now` first")
    kind = "ad-hoc" if ad_hoc else "full"
    try:
        rows = top_customers(db, n, run_id, kind)
    except OutputError as exc:
        raise click.ClickException(str(exc)) from None
    if rows.empty:
        raise click.ClickException(f"no rows for {'run ' + run_id if run_id else 'any ' + kind + ' run'} in {db}")
    _print_top(rows)
