"""The scheduled batch pattern on Dagster: assets, checks that can fail, schedules, alerts (definitions.py)."""
