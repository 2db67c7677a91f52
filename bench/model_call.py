"""Benchmark the model call alone: one row and 100 rows, hot and with cold caches.

    .venv/bin/python bench/model_call.py [--bundle DIR]
    uv run --with treelite --with tl2cgen python bench/model_call.py    # adds a compiled model (uv: .tools/bin/uv if make installed it)

Options measured on the same matrix, in the same run:

- `skewless/trees.py`: QuickScorer over the trees, compiled by numba (what every path scores
  with), and its walk of the trees node by node (what a forest with a tree of more than 64
  leaves is scored with);
- `skewless/score.py:predict`: XGBoost's C call with its arguments prepared once (what every
  path used before the walk);
- `Booster.inplace_predict`: the same call through XGBoost's Python wrapper;
- with treelite and tl2cgen installed: the model compiled to C by tl2cgen (gcc, parallel
  translation units), called through tl2cgen's Predictor.

"Cold" evicts the caches before every call (a 64 MB sum), as a service's requests do to each
other; "idle" sleeps 20 ms before every call, as a service does between requests at 50/s (the
CPU idles, other tenants of a shared host run: here that costs more than the evicted caches).
Prints the median over 300 calls (100 idle), and how far each option's probabilities are from
XGBoost's own (bit-equal share, largest difference) over 20,000 training rows.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from report import RESULTS, ROOT, stamp
sys.path.insert(0, str(ROOT))
DEFAULT_BUNDLE = RESULTS / "online-50000" / "models" / "churn" / "latest"
SMOKE_BUNDLE = RESULTS / "online-2000" / "models" / "churn" / "latest"


def compiled(booster, workdir: Path):
    """(tl2cgen Predictor call, compile seconds), or None without tl2cgen."""
    try:
        import tl2cgen
        import treelite
    except ImportError:
        return None
    t = time.perf_counter()
    lib = workdir / "model.so"
    tl2cgen.export_lib(treelite.frontend.from_xgboost(booster), toolchain="gcc", libpath=str(lib),
                       params={"parallel_comp": 8}, nthread=2)
    seconds = time.perf_counter() - t
    predictor = tl2cgen.Predictor(str(lib), nthread=1)

    def via_predictor(x):
        return predictor.predict(tl2cgen.DMatrix(x, dtype="float32")).reshape(-1)

    return via_predictor, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=None, help="A bundle directory (default: the one bench/online.py trains).")
    ap.add_argument("--smoke", action="store_true", help="10 calls each, on bench/online.py --smoke's bundle: to check the benchmark runs (make test)")
    args = ap.parse_args()
    calls = 10 if args.smoke else 300
    args.bundle = args.bundle or (SMOKE_BUNDLE if args.smoke else DEFAULT_BUNDLE)
    if not (args.bundle / "manifest.json").is_file():
        sys.exit(f"no bundle at {args.bundle}: run `.venv/bin/python bench/online.py --only health` (--smoke: `bench/online.py --smoke`) once, or pass --bundle")

    import pandas as pd

    from skewless.bundle import load_bundle
    from skewless.score import feature_matrix, predict

    bundle = load_bundle(args.bundle.resolve().name, args.bundle.resolve().parent.parent, name=args.bundle.resolve().parent.name)
    x_all = feature_matrix(bundle.features, pd.read_parquet(args.bundle / "training_set.parquet"))
    booster = bundle.booster
    forest = bundle.forest
    options = {
        "trees.py QuickScorer (every path)": forest.probabilities,
        "trees.py walk (trees of > 64 leaves)": forest.walk_only().probabilities,
        "score.predict (XGBoost's prepared C call)": lambda x: predict(booster, x),
        "Booster.inplace_predict": lambda x: booster.inplace_predict(x),
    }
    with tempfile.TemporaryDirectory() as tmp:
        extra = compiled(booster, Path(tmp))
        if extra is not None:
            options["tl2cgen Predictor (compiled C)"] = extra[0]
            print(f"tl2cgen compile: {extra[1]:.1f} s for {booster.num_boosted_rounds()} trees")
        else:
            print("treelite/tl2cgen not installed: XGBoost only (see the docstring to add them)")
        ref = predict(booster, x_all[:20000])
        junk = np.random.default_rng(0).random(8_000_000)

        def median_us(fn, rows: int, before: str) -> float:
            times = []
            for i in range(max(calls // 3, 1) if before == "idle" else calls):
                at = (i * 7919) % (len(x_all) - rows)
                x = np.ascontiguousarray(x_all[at:at + rows])
                if before == "cold":
                    junk.sum()
                elif before == "idle":
                    time.sleep(0.02)
                t = time.perf_counter()
                fn(x)
                times.append((time.perf_counter() - t) * 1e6)
            return statistics.median(times)

        print("\n" + stamp("bench/model_call.py"))
        print(f"{booster.num_boosted_rounds()} trees, {x_all.shape[1]} features; median of {calls} calls, microseconds\n")
        print("| option | 1 row hot | cold | idle | 100 rows hot | cold | idle | bit-equal to XGBoost | max abs diff |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name, fn in options.items():
            got = np.asarray(fn(x_all[:20000]), dtype=np.float32)
            cells = [median_us(fn, rows, before) for rows in (1, 100) for before in ("hot", "cold", "idle")]
            diff = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64))))
            print(f"| {name} | " + " | ".join(f"{c:.0f}" for c in cells) + f" | {np.mean(got == ref):.1%} | {diff:.2g} |")


if __name__ == "__main__":
    main()
