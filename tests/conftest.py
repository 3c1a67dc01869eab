"""Fixtures shared by several test files."""

import pytest
import torch


@pytest.fixture(scope="module")
def tiny_qwen():
    """A tiny random Qwen3 (V = 101, 2 layers) for tests of token_logprobs and gradient_saliency."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=101, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                      max_position_embeddings=64)
    return Qwen3ForCausalLM(cfg).eval()

