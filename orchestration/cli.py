"""`skewless scheduler`: the scheduled pipeline under `dagster dev` (webserver and daemon), on loopback.

The Redis the pipeline loads and checks is the one named (REDIS_URL or SKEWLESS_REDIS), or a
throwaway one for as long as the command runs; every run Dagster launches gets it in its
environment. DAGSTER_HOME (run history, schedules' state) defaults to data/dagster/.
"""

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import click

from skewless.paths import DATA_DIR, PROJECT_DIR


INSTANCE_YAML = """\
# written by `skewless scheduler` the first time; edit freely (https://docs.dagster.io/deployment/oss/dagster-yaml)
telemetry:
  enabled: false
nux:
  enabled: false
"""


@click.command("scheduler")
@click.option("--host", default="127.0.0.1", show_default=True, help="Where the Dagster UI listens.")
@click.option("--port", type=click.IntRange(1, 65535), default=3000, show_default=True)
@click.option("--dagster-home", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Dagster's instance directory (default: DAGSTER_HOME, else data/dagster/).")
def scheduler(host: str, port: int, dagster_home: Path | None) -> None:
    """Run the scheduled pipeline: daily batch scores, hourly materialization, weekly retraining, checks."""
    from feast_plugins.redis_server import redis_for_feast, sigterm_unwinds

    home = (dagster_home or Path(os.environ.get("DAGSTER_HOME") or DATA_DIR / "dagster")).resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"  # the instance: SQLite under home; no telemetry, no first-visit pop-up
    if not config.exists():
        config.write_text(INSTANCE_YAML)
    dagster = Path(sys.executable).with_name("dagster")
    with sigterm_unwinds(), redis_for_feast() as endpoint:
        env = dict(os.environ, DAGSTER_HOME=str(home), REDIS_URL=endpoint.url, SKEWLESS_REDIS=endpoint.feast)
        click.echo(f"Dagster on http://{host}:{port} (DAGSTER_HOME {home}); the pipeline's redis {endpoint.where}"
                   + (" (a throwaway one: name yours with REDIS_URL)" if endpoint.throwaway else ""), err=True)
        # its own process group: stopped as a whole (its webserver, daemon and code servers) however we stop
        proc = subprocess.Popen([str(dagster), "dev", "-h", host, "-p", str(port)], cwd=PROJECT_DIR, env=env, start_new_session=True)
        try:
            code = proc.wait()
        except KeyboardInterrupt:  # Ctrl-C: passed on to dagster dev below
            code = 0
        finally:
            _stop(proc)
    if code not in (0, -2, -15, 130):
        raise click.ClickException(f"dagster dev exited with {code}")


def _stop(proc: subprocess.Popen) -> None:
    """dagster dev and everything it started, stopped with us however we stop (Ctrl-C, SIGTERM from a
    supervisor, an error): SIGINT to its group (it shuts its webserver, daemon and code servers down
    on SIGINT, not on SIGTERM), then SIGKILL to whatever is left after 15 s."""
    import signal

    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
