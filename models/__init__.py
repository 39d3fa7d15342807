"""The learnable parts: policy LM, reward model, guard classifier, embedder, and the example domain."""
