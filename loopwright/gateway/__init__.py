"""The gateway: OpenAI-compatible serving with layered controls and the interaction log.

Modules, one job each: ``settings`` (typed config), ``app`` (FastAPI app and the control
middleware), ``service`` (the runtime and the chat pipeline), ``keys`` (API keys),
``ratelimit``, ``normalize`` and ``rules`` (input/output rail logic), ``encoders`` (guard
and embedder batching, retrieval index), ``backends`` (stub and Hugging Face models),
``routing`` (champion/canary from the MLflow registry), ``review`` (human review queue),
``spool`` (write-ahead log shipped to the object store), ``metrics``, ``components``
(loading heavy parts from settings) and ``cli`` (``serve``, ``keys``).

Nothing is imported here, so importing the package has no cost and no side effects.
"""
