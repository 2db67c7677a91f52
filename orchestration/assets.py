"""The batch pattern as assets: sources → registry → training set and bundle → the served bundle →
daily batch scores → published scores, and the online features loaded beside them.

Every step calls the function the matching `skewless` command calls (never a second copy):
`feast_plugins.apply.apply_registry` (`skewless apply`), `training.train.train` (`skewless
train`), `batch.job.run_batch` (`skewless score`), `batch.publish.publish` (its publish step),
`feast_plugins.materialize.materialize` (`skewless materialize`). Each materialization records
the contract it used (FeatureService, bundle version) as metadata, so the asset graph in the UI
shows which contract every output came from.

Failures: the steps that talk to Redis retry with exponential backoff (a restart, a failover, a
killed worker); a step that still fails leaves what was there: the batch job swaps a run in
atomically, materialization only moves a watermark after Redis acknowledged every write, and a
bundle only becomes `latest` through the gate (orchestration/gate.py).
"""

from datetime import datetime, timezone
from pathlib import Path

import warnings

import dagster as dg
from pydantic import Field

warnings.filterwarnings("ignore", category=dg.BetaWarning, message=".*observable_source_asset")  # the sources are observed, as documented

from orchestration.resources import SkewlessResource

SOURCES = "sources"
# daily partitions by as-of date; the partition of day D scores as of D 00:00 UTC. end_offset=1:
# the partition of today exists from 00:00, so the 02:00 schedule can request it.
DAILY = dg.DailyPartitionsDefinition(start_date="2026-01-01", timezone="UTC", end_offset=1)
# transient failures (Redis restarting or failing over, a killed worker): 3 more tries, after 3, 6 and 12 s
RETRY = dg.RetryPolicy(max_retries=3, delay=3, backoff=dg.Backoff.EXPONENTIAL)
VIEW_OF_SOURCE = {"customer_profiles": "customer_profile", "customer_activity": "customer_activity", "account_state": "account_state"}


def as_of(partition_key: str) -> datetime:
    """The as-of time of a daily partition: its day at 00:00 UTC."""
    return datetime.strptime(partition_key, "%Y-%m-%d").replace(tzinfo=timezone.utc)


def _source_path(skewless: SkewlessResource, name: str) -> Path:
    from feast.infra.offline_stores.file_source import FileSource

    from skewless.labels import LABELS_FILE

    if name == "churn_labels":
        return skewless.repo / "data" / LABELS_FILE
    store = skewless.store()
    view = store.get_feature_view(VIEW_OF_SOURCE[name])
    return Path(FileSource.get_uri_for_file_path(store.repo_path, view.batch_source.path))


def _observe(name: str):
    @dg.observable_source_asset(name=name, group_name=SOURCES, description=f"The raw `{name}` Parquet source, observed: its newest event time.")
    def observed(skewless: SkewlessResource) -> dg.ObserveResult:
        import duckdb

        from feast.errors import FeatureViewNotFoundException

        try:
            path = _source_path(skewless, name)
        except FeatureViewNotFoundException as exc:  # a repo never applied: the registry asset comes first
            return dg.ObserveResult(data_version=dg.DataVersion("unregistered"), metadata={"note": f"{exc}: materialize feast_registry"})
        pattern = str(path / "**" / "*.parquet") if path.is_dir() else str(path)
        if not (path.is_dir() and any(path.rglob("*.parquet"))) and not path.is_file():
            return dg.ObserveResult(data_version=dg.DataVersion("missing"), metadata={"path": str(path), "rows": 0})
        ((rows, newest),) = duckdb.sql(f"SELECT count(*), max(event_timestamp) FROM read_parquet('{pattern}')").fetchall()
        return dg.ObserveResult(data_version=dg.DataVersion(f"{rows}:{newest}"),
                                metadata={"path": str(path), "rows": rows, "newest_event_time": str(newest)})

    return observed


raw_sources = [_observe(n) for n in ("customer_profiles", "customer_activity", "account_state", "churn_labels")]


@dg.asset(group_name="registry", deps=[s.key for s in raw_sources], kinds={"feast"},
          description="The feature definitions registered: `feast apply` on feature_repo/ (skewless apply).")
def feast_registry(skewless: SkewlessResource) -> dg.MaterializeResult:
    from feast_plugins.apply import apply_registry

    lines = apply_registry(skewless.repo)
    store = skewless.store()
    return dg.MaterializeResult(metadata={
        "feature_views": ", ".join(sorted(v.name for v in store.list_feature_views())),
        "feature_services": ", ".join(sorted(s.name for s in store.list_feature_services())),
        "feast_apply": "\n".join(lines) or "no change",
    })


class TrainConfig(dg.Config):
    feature_service: str = Field(default="churn_v2", description="The contract the model is trained on.")
    max_rows: int = Field(default=1_000_000, description="Sample whole customers down to about this many label rows (0: all).")


@dg.multi_asset(
    specs=[dg.AssetSpec("training_set", deps=[feast_registry, "churn_labels"], group_name="training", kinds={"parquet"},
                        description="Point-in-time training set from the FeatureService (inside the bundle)."),
           dg.AssetSpec("candidate_bundle", deps=["training_set"], group_name="training", kinds={"xgboost"},
                        description="A newly trained bundle, not yet served (skewless train, `latest` unmoved).")],
)
def train_candidate(context: dg.AssetExecutionContext, config: TrainConfig, skewless: SkewlessResource):
    from training.train import train

    result = train(skewless.store(), skewless.repo, skewless.models, max_rows=config.max_rows or None,
                   feature_service=config.feature_service, promote=False)
    b = result.bundle
    yield dg.MaterializeResult(asset_key="training_set", metadata={
        "feature_service": b.feature_service, "rows_train": result.rows["train"], "rows_validation": result.rows["validation"],
        "path": str(b.path / "training_set.parquet"), "retrieve_seconds": result.seconds.get("retrieve", 0.0)})
    yield dg.MaterializeResult(asset_key="candidate_bundle", metadata={
        "bundle": f"{b.name}/{b.version}", "feature_service": b.feature_service, "path": str(b.path),
        "roc_auc": result.metrics["model"]["roc_auc"], "pr_auc": result.metrics["model"]["pr_auc"]})


@dg.asset(deps=["candidate_bundle"], group_name="training", kinds={"xgboost"},
          description="The bundle every path serves (`latest`), moved only through the promotion gate.")
def serving_bundle(context: dg.AssetExecutionContext, skewless: SkewlessResource) -> dg.MaterializeResult:
    from orchestration.gate import PromotionRefused, promote
    from skewless.bundle import list_versions

    candidate = newest_candidate(context, skewless)
    sample = None
    if skewless.redis_url:
        sample = sample_ids(skewless)
    try:
        if sample:
            with skewless.online():
                verdict = promote(skewless.models, candidate, skewless.promotion_tolerance, skewless.store(), sample)
        else:
            verdict = promote(skewless.models, candidate, skewless.promotion_tolerance)
    except PromotionRefused as exc:
        raise dg.Failure(str(exc), metadata={"candidate": candidate, "versions": ", ".join(list_versions(skewless.models))}) from None
    return dg.MaterializeResult(metadata=verdict.metadata())


def newest_candidate(context, skewless: SkewlessResource) -> str:
    """The candidate this run trained (from its materialization), else the newest version on disk."""
    from skewless.bundle import list_versions

    event = context.instance.get_latest_materialization_event(dg.AssetKey("candidate_bundle"))
    meta = event.asset_materialization.metadata if event and event.asset_materialization else {}
    if "bundle" in meta:
        return str(meta["bundle"].value).split("/", 1)[1]
    versions = list_versions(skewless.models)
    if not versions:
        raise dg.Failure(f"no bundle in {skewless.models}: materialize candidate_bundle first")
    return versions[-1]


def sample_ids(skewless: SkewlessResource) -> list[int]:
    """Customers to compare: a spread of the active ones now (the profiles' newest snapshot)."""
    from batch.retrieval import active_customers

    ids = active_customers(skewless.store(), datetime.now(timezone.utc))
    step = max(1, len(ids) // max(skewless.parity_sample, 1))
    return [int(c) for c in ids.iloc[::step][: skewless.parity_sample]]


def load_serving(skewless: SkewlessResource, store=None):
    """The bundle every path serves now (`latest`), checked against the registry when given the store."""
    from skewless.bundle import load_bundle

    return load_bundle("latest", skewless.models, store=store)


@dg.asset(partitions_def=DAILY, deps=[serving_bundle, feast_registry], group_name="batch", kinds={"duckdb", "parquet"}, retry_policy=RETRY,
          description="Every active customer scored as of the partition's day 00:00 UTC (skewless score): DuckDB table "
                      "churn_predictions and a Parquet partition, swapped in atomically; re-running a partition replaces it.")
def batch_scores(context: dg.AssetExecutionContext, skewless: SkewlessResource) -> dg.MaterializeResult:
    from batch.job import run_batch
    from batch.publish import scores_dir
    from skewless.paths import PREDICTIONS_DIR

    when = as_of(context.partition_key)
    store = skewless.store()
    bundle = load_serving(skewless, store)
    served_dir = scores_dir(store)
    parquet_root = served_dir.parent if served_dir is not None else PREDICTIONS_DIR
    summary = run_batch(store, bundle, when, None, skewless.db, parquet_root)
    return dg.MaterializeResult(metadata={
        "as_of": when.isoformat(), "run_id": summary.run_id, "bundle": summary.model, "feature_service": bundle.feature_service,
        "customers": summary.customers, "not_found": len(summary.not_found), "rows_per_second": summary.rows_per_second,
        "duckdb": str(skewless.db), "parquet": str(parquet_root)})


@dg.asset(partitions_def=DAILY, deps=[batch_scores], group_name="batch", kinds={"redis"}, retry_policy=RETRY,
          description="The partition's committed scores loaded into Redis for GET /scores/{id} (newer as-of wins).")
def published_scores(context: dg.AssetExecutionContext, skewless: SkewlessResource) -> dg.MaterializeResult:
    from batch.publish import publish

    when = as_of(context.partition_key)
    with skewless.online() as endpoint:
        store = skewless.store()
        bundle = load_serving(skewless)
        run = publish(store, when, bundle.name)
    return dg.MaterializeResult(metadata={
        "redis": endpoint.where, "as_of": when.isoformat(), "bundle": f"{bundle.name}/{bundle.version}",
        "serves_run": run.run_id if run else "none", "serves_as_of": run.as_of.isoformat() if run else "none"})


@dg.asset(deps=[feast_registry], group_name="online", kinds={"redis"}, retry_policy=RETRY,
          description="Every online view loaded into Redis up to now, from that Redis's own watermark (skewless materialize).")
def online_features(skewless: SkewlessResource) -> dg.MaterializeResult:
    from feast_plugins.materialize import materialize

    now = datetime.now(timezone.utc)
    with skewless.online() as endpoint:
        result = materialize(skewless.store(), now)
    marks = {name: (m.end.isoformat() if m else "none") for name, m in result["after"].items()}
    return dg.MaterializeResult(metadata={"redis": endpoint.where, "rows": result["rows"], "written": result["written"],
                                          "seconds": result["seconds"], **{f"watermark {k}": v for k, v in marks.items()}})


assets = [*raw_sources, feast_registry, train_candidate, serving_bundle, batch_scores, published_scores, online_features]
