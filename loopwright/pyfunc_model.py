"""MLflow "model from code" wrapping a loopwright model folder.

MLflow executes this file when a logged model is loaded with ``mlflow.pyfunc.load_model``;
``set_model`` at the bottom is the contract of models-from-code, not an import-time side
effect of the library (nothing imports this module).
"""

from __future__ import annotations

from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel


class FolderModel(PythonModel):
    """Serves a policy folder through the generic HF chat path (other kinds: path only)."""

    def load_context(self, context: Any) -> None:
        """Remember the folder; load a policy eagerly so predict is fast."""
        self.folder = context.artifacts["model_dir"]
        self.kind = (context.model_config or {}).get("kind", "policy")
        self.policy = None
        if self.kind == "policy":
            from models.generation import load_policy

            self.policy = load_policy(self.folder, device="cpu")

    # MLflow reads predict's input type hint to infer the logged model's signature and to
    # check inputs; `Any` is not a hint it supports and made every log_model warn ("Type
    # hints must be wrapped in list[...]", "Any type hint is inferred as AnyType").
    # list[str] in and out is the contract; MLflow converts a DataFrame of prompts to it.
    def predict(
        self, context: Any, model_input: list[str], params: dict[str, Any] | None = None
    ) -> list[str]:
        """Policy: a list of prompts (MLflow converts a ``prompt`` DataFrame) -> replies."""
        if self.policy is None:
            return [self.folder]
        from models.generation import generate_batch

        conversations = [[{"role": "user", "content": str(p)}] for p in model_input]
        return generate_batch(self.policy, conversations)


mlflow.models.set_model(FolderModel())
