"""Prefect tasks: one module per stage; each task resolves inputs and calls one library function."""
