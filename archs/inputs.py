"""What one example looks like (`InputSpec`), and the inputs several families share.

A registry spec's sizes each name their input (archbench.archs.registry.Size); the engine and
the training code carry the spec as a value and make random batches from it (`example`).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

INPUT_KINDS = ("image", "sequence", "tokens", "seq2seq")


@dataclass(frozen=True)
class InputSpec:
    """What one example looks like.

    kind:
      image     float (H, W, C)
      sequence  float (T, F)
      tokens    int (T,) in [0, vocab_size)
      seq2seq   int source (S,) and target (T,) in [0, vocab_size); shape is (S, T)
    """

    kind: str
    shape: tuple[int, ...]
    vocab_size: int | None = None

    def __post_init__(self):
        if self.kind not in INPUT_KINDS:
            raise ValueError(f"input kind {self.kind!r} not in {INPUT_KINDS}")
        if self.kind in ("tokens", "seq2seq") and not self.vocab_size:
            raise ValueError(f"{self.kind} input needs vocab_size")

    def describe(self) -> str:
        dims = "x".join(map(str, self.shape))
        if self.kind == "tokens":
            return f"tokens {dims} (vocab {self.vocab_size})"
        if self.kind == "seq2seq":
            return f"seq2seq {self.shape[0]}->{self.shape[1]} (vocab {self.vocab_size})"
        return f"{self.kind} {dims}"

    @property
    def tokens_per_example(self) -> int | None:
        """Positions a sequence model processes per example (None for images)."""
        if self.kind == "image":
            return None
        if self.kind == "seq2seq":
            return self.shape[1]  # target tokens predicted
        return self.shape[0]

    def example(self, key: jax.Array, batch: int):
        """A random batch of inputs: an array, or a dict {src, tgt} for seq2seq."""
        if self.kind in ("image", "sequence"):
            return jax.random.normal(key, (batch, *self.shape), jnp.float32)
        if self.kind == "tokens":
            return jax.random.randint(key, (batch, *self.shape), 0, self.vocab_size)
        k_src, k_tgt = jax.random.split(key)
        src_len, tgt_len = self.shape
        return {
            "src": jax.random.randint(k_src, (batch, src_len), 0, self.vocab_size),
            "tgt": jax.random.randint(k_tgt, (batch, tgt_len), 0, self.vocab_size),
        }


# Inputs several families share, defined once.
IMAGE_28 = InputSpec("image", (28, 28, 1))  # MNIST, Fashion-MNIST
ROWS_28 = InputSpec("sequence", (28, 28))  # a 28x28 image read row by row
MNIST1D = InputSpec("sequence", (40, 1))  # MNIST-1D (Greydanus 2020): 40 steps, 1 feature
IMAGENET = InputSpec("image", (224, 224, 3))
CIFAR = InputSpec("image", (32, 32, 3))  # CIFAR-10/100
