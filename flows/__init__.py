"""Prefect flows: composition only, readable top to bottom."""
