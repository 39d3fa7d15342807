"""Learnable parts: policy LM, reward model, guard, embedder, and the example domain."""
