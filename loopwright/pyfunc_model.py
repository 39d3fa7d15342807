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

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        """Policy: a list of prompts (or a DataFrame column ``prompt``) -> replies."""
        if self.policy is None:
            return [self.folder]
        from models.generation import generate_batch

        prompts = (
            list(model_input["prompt"]) if hasattr(model_input, "columns") else list(model_input)
        )
        conversations = [[{"role": "user", "content": str(p)}] for p in prompts]
        return generate_batch(self.policy, conversations)


mlflow.models.set_model(FolderModel())
