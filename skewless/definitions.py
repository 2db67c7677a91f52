"""What a view's values mean, as a fingerprint: the bundle records them, every path compares them.

A model learns from features as the registry defined them when it was trained. The names and
types (the bundle's contract) can stay the same while what they mean moves: a view's TTL
shortened, an on-demand view's window changed from 24 h to 48 h, a source's timestamp column
swapped. Training, batch, online and stream would then all compute the new features alike, and
all of them differently from what the model learned: skew that no parity test between paths
can see. So `skewless train` records a fingerprint of every view and on-demand view behind its
FeatureService (manifest `definitions`), and skewless/bundle.py:check_contract refuses a bundle
whose fingerprints the registry no longer matches.

Counted: features and types, entity keys, TTL, the source's time columns and field mapping; for
an on-demand view, its mode, inputs, outputs and the function's code (its syntax tree: not
comments, formatting, the docstring or the decorator's descriptions). Not counted: descriptions,
tags, owners, and where the data lies, so a repo moved to another directory keeps its models.
The online store's watermarks add the source's path (feast_plugins/watermark.py): rows loaded from
another file are other rows.
"""

from __future__ import annotations

import ast
import hashlib
import json
from typing import Any


def fingerprint(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def view_spec(view) -> dict[str, Any]:
    """What a feature view's values depend on, apart from where its data lies."""
    src = view.batch_source
    return {
        "features": [(f.name, str(f.dtype)) for f in view.features],
        "entities": [(c.name, str(c.dtype)) for c in view.entity_columns],
        "ttl": view.ttl.total_seconds() if view.ttl else 0,
        "source": [getattr(src, "timestamp_field", None), getattr(src, "created_timestamp_column", None),
                   dict(getattr(src, "field_mapping", None) or {})],
    }


def on_demand_spec(odfv) -> dict[str, Any]:
    """What an on-demand view computes: its code, mode, inputs and outputs."""
    return {
        "mode": str(getattr(odfv, "mode", "")),
        "code": _code(getattr(odfv.feature_transformation, "udf_string", "") or ""),
        "inputs": sorted((p.name, [f.name for f in p.features]) for p in odfv.source_feature_view_projections.values())
        + sorted((r.name, [(f.name, str(f.dtype)) for f in r.schema]) for r in odfv.source_request_sources.values()),
        "outputs": [(f.name, str(f.dtype)) for f in odfv.features],
    }


def of(views, odfvs) -> dict[str, str]:
    """Name -> fingerprint for the views and on-demand views a FeatureService reads."""
    out = {v.name: fingerprint(view_spec(v)) for v in views}
    out.update({o.name: fingerprint(on_demand_spec(o)) for o in odfvs})
    return dict(sorted(out.items()))


def _code(source: str) -> str:
    """The function's syntax tree without its decorators and docstring; the text itself when it does not parse."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return source
    fn = next((n for n in tree.body if isinstance(n, ast.FunctionDef)), None)
    if fn is None:
        return source
    fn.decorator_list = []
    if fn.body and isinstance(fn.body[0], ast.Expr) and isinstance(getattr(fn.body[0], "value", None), ast.Constant) \
            and isinstance(fn.body[0].value.value, str):
        fn.body = fn.body[1:]
    return ast.dump(fn)
