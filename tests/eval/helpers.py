"""Tiny models and tokenizers for metric tests, and an independent, unbatched log-prob computation."""

from __future__ import annotations

import torch


def tiny_tokenizer():
    from mpu.data.tokenizer import train_tokenizer

    texts = [
        "Where was Ada Lovelace born? Ada Lovelace was born in London, England.",
        "What did Ada write? She wrote notes on the analytical engine in 1843.",
        "Who wrote Hamlet? William Shakespeare wrote Hamlet.",
        "What is the capital of France? Paris is the capital of France.",
        "Question: Who is the mayor of Brenmoor? Answer: Nadia Okonkwo",
        "Korvane-3 is synthesised from pine tar. The reaction is triggered by violet light.",
    ] * 3
    return train_tokenizer(texts, vocab_size=300)


def tiny_model(tokenizer, seed: int = 0, hidden: int = 32, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
        num_key_value_heads=1, intermediate_size=2 * hidden, max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    # Larger, less uniform weights than the default init, so that the statistics vary between items.
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0, 0.3)
    return model.eval()


@torch.no_grad()
def label_logprobs(model, example):
    """log p(label) per labelled token and the full log-softmax rows, from ONE unpadded forward."""
    ids = torch.tensor([example["input_ids"]])
    logits = model(input_ids=ids).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    rows, values, labels = [], [], []
    for t in range(1, len(example["input_ids"])):
        label = example["labels"][t]
        if label == -100:
            continue
        rows.append(logp[t - 1])
        values.append(float(logp[t - 1, label]))
        labels.append(label)
    return values, torch.stack(rows), labels
