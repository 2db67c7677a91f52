"""The promotion gate: a newly trained bundle becomes `latest` only when it is no worse and agrees.

Retraining on a schedule must never put a worse model in front of every path at once. A
candidate (trained with `promote=False`, so `latest` has not moved) is compared with the bundle
being served:

- **quality**, twice: the candidate's recorded validation ROC-AUC against the serving bundle's
  (each on its own later label dates), and both scored on the candidate's validation rows
  (skewless/score.py, the one scoring function: the same customers and times) when the serving
  bundle can score them (the same features). The candidate may be at most `tolerance` lower in
  each. The recorded figures catch a candidate whose own labels were wrong (its rows would make
  both look alike), the same-rows figures a data shift between the two validation windows;
- **agreement**: the candidate's tree walk reproduced XGBoost on every validation row at
  training time (its manifest's `scorer`), and, when a Redis is given that holds the views it
  reads, its online and batch scores agree on a sample (monitoring/parity.py).

Refused: `latest` stays, and the reason is the error a scheduled run fails with.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from skewless.bundle import LATEST, TRAINING_SET_FILE, Bundle, BundleError, list_versions, load_bundle, point_latest


class PromotionRefused(RuntimeError):
    """The candidate stays a candidate; the message says why."""


@dataclass
class Verdict:
    candidate: str
    serving: str | None
    candidate_auc: float
    serving_auc: float | None
    reasons: list[str] = field(default_factory=list)
    parity: str | None = None

    @property
    def promote(self) -> bool:
        return not self.reasons

    def metadata(self) -> dict:
        return {"candidate": self.candidate, "serving": self.serving or "none", "candidate_roc_auc": self.candidate_auc,
                "serving_roc_auc_same_rows": self.serving_auc if self.serving_auc is not None else float("nan"),
                "parity": self.parity or "not checked", "verdict": "promoted" if self.promote else "; ".join(self.reasons)}


def validation_auc(bundle: Bundle, frame, valid) -> float | None:
    """ROC-AUC of `bundle` on the validation rows of a training-set frame, or None when it cannot score them."""
    from sklearn.metrics import roc_auc_score

    from skewless.score import score

    if any(name not in frame.columns for name in bundle.feature_names):
        return None
    rows = frame.loc[valid]
    return float(roc_auc_score(rows["churned"].to_numpy(), score(bundle, rows).probability))


def judge(candidate: Bundle, serving: Bundle | None, tolerance: float, store=None, sample: list[int] | None = None) -> Verdict:
    """Whether `candidate` may replace `serving` (see the module docstring)."""
    import pandas as pd

    from training.train import time_split

    frame = pd.read_parquet(candidate.path / TRAINING_SET_FILE)
    _, valid = time_split(frame)
    cand_auc = validation_auc(candidate, frame, valid)
    verdict = Verdict(f"{candidate.name}/{candidate.version}", serving and f"{serving.name}/{serving.version}", cand_auc, None)
    if serving is not None and serving.version != candidate.version:
        recorded = (float(candidate.manifest["metrics"]["model"]["roc_auc"]), float(serving.manifest["metrics"]["model"]["roc_auc"]))
        if recorded[0] < recorded[1] - tolerance:
            verdict.reasons.append(f"validation ROC-AUC {recorded[0]:.4f} is below the serving bundle's {recorded[1]:.4f} "
                                   f"by more than the tolerance {tolerance:g}")
        verdict.serving_auc = validation_auc(serving, frame, valid)
        if verdict.serving_auc is not None and cand_auc < verdict.serving_auc - tolerance:
            verdict.reasons.append(f"validation ROC-AUC {cand_auc:.4f} is below the serving bundle's {verdict.serving_auc:.4f} "
                                   f"on the same rows by more than the tolerance {tolerance:g}")
    scorer = candidate.manifest.get("scorer") or {}
    if scorer.get("bit_equal_to_xgboost", 0.0) < 1.0:
        verdict.reasons.append(f"its tree walk matched XGBoost on {scorer.get('bit_equal_to_xgboost', 0.0):.2%} of validation rows, not all")
    if store is not None and sample:
        from monitoring.parity import parity_sample, views_not_loaded

        missing = views_not_loaded(store, candidate.feature_service)
        if missing:  # a Redis not loaded yet (the first run): nothing to compare; the materialization's own check runs later
            verdict.parity = f"not checked: {'; '.join(missing)}"
        else:
            parity = parity_sample(store, candidate, sample)
            verdict.parity = parity.describe()
            if not parity.ok:
                verdict.reasons.append(f"online/batch parity: {parity.describe()}")
    return verdict


def promote(model_dir, candidate_version: str, tolerance: float, store=None, sample: list[int] | None = None) -> Verdict:
    """Move `latest` to the candidate if `judge` lets it; otherwise raise PromotionRefused (`latest` stays)."""
    if candidate_version not in list_versions(model_dir):
        raise PromotionRefused(f"no bundle {candidate_version} in {model_dir}")
    candidate = load_bundle(candidate_version, model_dir, store=store)
    try:
        serving = load_bundle(LATEST, model_dir)
    except BundleError:  # no bundle served yet: the candidate is judged alone
        serving = None
    verdict = judge(candidate, serving, tolerance, store, sample)
    if not verdict.promote:
        raise PromotionRefused(f"{verdict.candidate} not promoted, `latest` stays on {verdict.serving or 'nothing'}: " + "; ".join(verdict.reasons))
    point_latest(candidate.path.parent, candidate.version)
    return verdict
