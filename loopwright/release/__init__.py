"""Release policy: offline gate, canary analysis, approval, and registry alias operations.

The gate, canary analysis and approval are pure functions over typed records; only
:mod:`loopwright.release.registry_ops` talks to MLflow. Nothing here imports Prefect.
"""
