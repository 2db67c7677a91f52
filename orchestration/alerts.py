"""One alert line per failed run, where the operator looks: a log file and/or a webhook.

Both are off by default. `SKEWLESS_ALERT_LOG` names a file that gets one line per failure
(appended, so `tail -f` or a log shipper follows it); `SKEWLESS_ALERT_WEBHOOK` a URL that gets
the same line as JSON `{"text": ...}` (what Slack's and most chat webhooks take). The sensor runs
in the Dagster daemon (`dagster dev` starts one); a webhook that does not answer is logged and
does not stop the sensor.
"""

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg


def alert_line(job: str, run_id: str, error: str, at: datetime | None = None) -> str:
    """`2026-12-07T02:00:41Z skewless run failed: job batch_scoring, run 1a2b3c4d: <first line of the error>`."""
    at = (at or datetime.now(timezone.utc)).astimezone(timezone.utc)
    first = (error or "no error message").strip().splitlines()[0] if (error or "").strip() else "no error message"
    return f"{at:%Y-%m-%dT%H:%M:%SZ} skewless run failed: job {job}, run {run_id[:8]}: {first}"


def send(line: str) -> list[str]:
    """Write `line` to the configured places; which ones got it."""
    sent = []
    if path := os.environ.get("SKEWLESS_ALERT_LOG"):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(line + "\n")
        sent.append(path)
    if url := os.environ.get("SKEWLESS_ALERT_WEBHOOK"):
        import httpx

        httpx.post(url, json={"text": line}, timeout=5.0).raise_for_status()
        sent.append(url.split("?", 1)[0])
    return sent


@dg.run_failure_sensor(name="alert_on_failure", default_status=dg.DefaultSensorStatus.RUNNING,
                       description="One line per failed run to SKEWLESS_ALERT_LOG and/or SKEWLESS_ALERT_WEBHOOK.")
def alert_on_failure(context: dg.RunFailureSensorContext) -> None:
    run = context.dagster_run
    line = alert_line(run.job_name, run.run_id, context.failure_event.message or "")
    try:
        where = send(line)
    except Exception as exc:  # noqa: BLE001  (an alert channel that fails must not stop the sensor)
        context.log.error(f"alert not delivered ({type(exc).__name__}: {exc}): {line}")
        return
    context.log.info(f"alerted {', '.join(where) or 'nowhere (SKEWLESS_ALERT_LOG and SKEWLESS_ALERT_WEBHOOK unset)'}: {line}")
