"""Telemetry: traces (OpenTelemetry) and structured logs, set up the same way in every process."""
