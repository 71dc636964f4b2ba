"""Orchestration layer: Dagster Definitions, resources, partitions, jobs and the CLI."""
