"""LoRA adapters through peft: wrap a causal LM for training, save the adapter, merge it.

A LoRA candidate is a folder holding only the adapter (``adapter_config.json`` and its
weights), the tokenizer and the training record; the base model is another folder (in the
registry, another version). :func:`merge_adapter_folder` turns base + adapter into a plain
model folder, so every consumer (evaluation, gateway, canary) loads an adapter version
through the one path it already uses for full models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

ADAPTER_CONFIG_FILE = "adapter_config.json"


class LoraSettings(BaseModel):
    """Rank, scale and placement of the low-rank update (validated, frozen).

    Attributes:
        r: rank of each update matrix.
        alpha: scale numerator; the update is multiplied by ``alpha / r``.
        dropout: dropout on the adapter's input during training.
        target_modules: ``"all-linear"`` (every linear layer but the output head) or the
            module names to adapt (e.g. ``[q_proj, v_proj]``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    r: int = Field(default=8, ge=1)
    alpha: int = Field(default=16, ge=1)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: Literal["all-linear"] | list[str] = "all-linear"


def is_adapter_folder(folder: Path) -> bool:
    """True when ``folder`` holds a peft adapter rather than a full model."""
    return (Path(folder) / ADAPTER_CONFIG_FILE).is_file()


def with_lora(model: PreTrainedModel, settings: LoraSettings) -> Any:
    """Wrap ``model`` in a peft ``PeftModel``: adapters trainable, every base weight frozen.

    Returns:
        The peft model (its ``save_pretrained`` writes the adapter only).
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def load_adapter_on_base(base_dir: Path, adapter_dir: Path) -> Any:
    """The base model with the adapter applied (not merged), in eval mode, fp32."""
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    return PeftModel.from_pretrained(base, str(adapter_dir)).eval()


def merge_adapter_folder(base_dir: Path, adapter_dir: Path, out_dir: Path) -> Path:
    """Write base + adapter as one plain model folder (weights merged, tokenizer kept).

    The adapter folder's tokenizer and generation settings win over the base's (they are
    what the adapter was trained with); its training record is copied beside the weights.

    Args:
        base_dir: the full model the adapter was trained on.
        adapter_dir: a folder written by a LoRA fine-tune (:func:`is_adapter_folder`).
        out_dir: where the merged folder goes (created; existing files are overwritten).

    Returns:
        ``out_dir``.

    Raises:
        FileNotFoundError: ``adapter_dir`` holds no adapter.
    """
    import shutil

    from transformers import GenerationConfig

    if not is_adapter_folder(adapter_dir):
        raise FileNotFoundError(f"{adapter_dir}: no {ADAPTER_CONFIG_FILE}; not a LoRA adapter")
    merged = load_adapter_on_base(base_dir, adapter_dir).merge_and_unload()
    if (Path(adapter_dir) / "generation_config.json").is_file():
        merged.generation_config = GenerationConfig.from_pretrained(str(adapter_dir))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(str(adapter_dir)).save_pretrained(out_dir)
    for extra in Path(adapter_dir).glob("*.json"):
        # The adapter's own config stays behind: the merged folder is a plain model.
        if extra.name != ADAPTER_CONFIG_FILE and not (out_dir / extra.name).exists():
            shutil.copy2(extra, out_dir / extra.name)
    return out_dir
