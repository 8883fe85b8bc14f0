"""Dagster orchestration of the SLMRec pipeline (a `dg`-style project: definitions.py loads defs/)."""
