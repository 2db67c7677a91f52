"""Benchmark the pieces around the model in one /predict request, one by one, in process.

    .venv/bin/python bench/request_parts.py [--bundle DIR]

Each piece is timed on its own, hot, as the service runs it (median of 20,000 calls, µs):
body validation (the JSON body parsed and validated as FastAPI does it: `json.loads`, then the
route's Pydantic model), building and serializing the answer (the service's row, written by
`RowsJSON` as the Prediction model's JSON), one Prometheus histogram observation in
this process and in multiprocess mode (what `skewless serve --workers N` uses), one counter
increment, both through online/metrics.py's Tally, the API-key check over 3 keys, and one row handed to the feature log.

Needs a bundle for the feature log's schema (bench/online.py trains one).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from report import RESULTS, ROOT, stamp
sys.path.insert(0, str(ROOT))
DEFAULT_BUNDLE = RESULTS / "online-50000" / "models" / "churn" / "latest"
SMOKE_BUNDLE = RESULTS / "online-2000" / "models" / "churn" / "latest"
CALLS = 20_000
SMOKE_CALLS = 500


def median_us(fn, calls: int | None = None) -> float:
    calls = calls or CALLS
    rounds = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(calls // 5):
            fn()
        rounds.append((time.perf_counter() - t) / (calls // 5) * 1e6)
    return statistics.median(rounds)


def metrics_parts() -> dict[str, float]:
    """Histogram and counter costs in this process's metrics mode (set before the import)."""
    from online.metrics import MODEL, PREDICTIONS, tally

    ok = PREDICTIONS.labels(outcome="ok")
    model, counted = tally(MODEL), tally(ok)
    return {"histogram observe": median_us(lambda: MODEL.observe(0.001)), "counter inc": median_us(ok.inc),
            "histogram observe through its Tally (what the service does)": median_us(lambda: model.observe(0.001)),
            "counter inc through its Tally": median_us(counted.inc)}


def main() -> None:
    global CALLS
    if sys.argv[1:2] == ["--metrics"]:  # child: metrics only, in the mode its environment sets
        CALLS = SMOKE_CALLS if "--smoke" in sys.argv else CALLS
        print(json.dumps(metrics_parts()))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=None, help="A bundle directory (default: the one bench/online.py trains).")
    ap.add_argument("--smoke", action="store_true", help=f"{SMOKE_CALLS} calls each, on bench/online.py --smoke's bundle: to check the benchmark runs (make test)")
    args = ap.parse_args()
    if args.smoke:
        CALLS = SMOKE_CALLS
    args.bundle = args.bundle or (SMOKE_BUNDLE if args.smoke else DEFAULT_BUNDLE)
    if not (args.bundle / "manifest.json").is_file():
        sys.exit(f"no bundle at {args.bundle}: run `.venv/bin/python bench/online.py --only health` (--smoke: `bench/online.py --smoke`) once, or pass --bundle")

    from monitoring.feature_log import FeatureLogger, Served
    from online.auth import ApiKeys
    from online.responses import RowsJSON
    from online.schemas import PredictRequest
    from skewless.bundle import load_bundle

    path = args.bundle.resolve()
    bundle = load_bundle(path.name, path.parent.parent, name=path.parent.name)
    body = b'{"customer_id": 1234567}'
    parts: dict[str, float] = {}
    parts["body: json.loads + PredictRequest validation"] = median_us(lambda: PredictRequest.model_validate(json.loads(body)))
    now = datetime.now(timezone.utc)
    as_of = now.isoformat()

    def answer():
        return RowsJSON({"customer_id": 1234567, "status": "ok", "churn_probability": 0.123456789, "churn_prediction": 0,
                         "risk_segment": "Low", "model_name": bundle.name, "model_version": bundle.version, "features_as_of": as_of})

    parts["answer: the row built + serialized (RowsJSON)"] = median_us(answer)
    keys = ApiKeys("sk_one,sk_two,sk_three", None)
    parts["API key check (3 keys)"] = median_us(lambda: keys.allows("sk_three"))
    for mode, env in (("in process", {}), ("multiprocess", {"PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp()})):
        child = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"} | env
        out = subprocess.run([sys.executable, __file__, "--metrics", *(["--smoke"] if args.smoke else [])], env=child, capture_output=True, text=True, check=True).stdout
        for name, us in json.loads(out.strip().splitlines()[-1]).items():
            parts[f"metrics: {name} ({mode})"] = us
    with tempfile.TemporaryDirectory() as tmp:
        logger = FeatureLogger(Path(tmp), bundle, 10_000_000, 3600, 10_000_000, 3600)
        row = {f.name: [None] for f in bundle.features}
        served = Served(now, [1234567], [0.1], [0], ["Low"], row)
        parts["feature log: one row handed over"] = median_us(lambda: logger.log(served))
        logger.close()
    print(stamp("bench/request_parts.py"))
    print(f"median of {CALLS:,} calls, hot, in process\n")
    print("| piece | µs per request |")
    print("|---|---|")
    for name, us in parts.items():
        print(f"| {name} | {us:.2f} |")


if __name__ == "__main__":
    main()
