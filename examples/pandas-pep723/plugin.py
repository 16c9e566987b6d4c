# /// script
# requires-python = ">=3.11"
# dependencies = [
#     "pandas>=2.2",
#     "pyarrow>=17",
# ]
# ///
"""A plugin with third-party dependencies, declared inline (PEP 723).

`casparian run` locks the dependencies above with uv once, and every worker runs
the plugin in a virtualenv built from that lock: nothing is installed by hand.

Two topics: every reading goes to "output", one summary row per sensor to
"by_sensor" (MANIFEST["topics"] asks for a Parquet file for it too).
"""
import pandas as pd

MANIFEST = {"name": "sensor-readings", "version": "1.0.0", "topics": ["by_sensor"]}


class Plugin:
    def __init__(self, config):
        self.config = config or {}

    def consume(self, file_path, context):
        df = pd.read_csv(file_path, comment="#", skipinitialspace=True)
        df.columns = [c.strip().lower() for c in df.columns]
        df["timestamp"] = pd.to_datetime(df["timestamp"], utc=True)
        df["celsius"] = pd.to_numeric(df["celsius"], errors="coerce")
        df["source_file"] = file_path.name

        readings = context.register_topic("output")
        context.publish(readings, df)

        by_sensor = (
            df.groupby("sensor", as_index=False)
            .agg(readings=("celsius", "size"), mean_celsius=("celsius", "mean"), max_celsius=("celsius", "max"))
        )
        by_sensor["source_file"] = file_path.name
        context.publish(context.register_topic("by_sensor"), by_sensor)
        return {"status": "success", "rows": len(df)}
