"""Thin Dagster asset and asset-check definitions over the science layer."""
