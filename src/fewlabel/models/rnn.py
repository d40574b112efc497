"""The from-scratch text baseline: a bidirectional LSTM/GRU classifier over a tokenizer's ids."""

from __future__ import annotations

import torch
from torch import nn

from fewlabel.errors import FewlabelError
from fewlabel.models.text_encoder import Batch, masked_mean


class RNNTextClassifier(nn.Module):
    """A from-scratch BiLSTM/GRU classifier: the no-pretraining baseline for text.

    Padding is handled either by packing (the RNN never reads padding; ``packed=True``) or by mask-aware
    pooling over padded outputs; pooling is ``mean``, ``max`` or ``last`` (final hidden state per direction).
    """

    def __init__(self, vocab_size: int, num_classes: int, embedding_dim: int = 128, hidden_size: int = 128,
                 num_layers: int = 1, bidirectional: bool = True, dropout: float = 0.1, cell: str = "lstm",
                 pooling: str = "mean", packed: bool = True, padding_idx: int = 0):
        super().__init__()
        cells = {"lstm": nn.LSTM, "gru": nn.GRU}
        if cell not in cells:
            raise FewlabelError(f"unknown RNN cell '{cell}'; choose lstm or gru")
        if pooling not in ("mean", "max", "last"):
            raise FewlabelError(f"unknown RNN pooling '{pooling}'; choose mean, max or last")
        if pooling == "last" and not packed:
            # Unpacked, the final states have read the padding (the backward direction reads it first).
            raise FewlabelError("RNN pooling 'last' needs packed=True; use mean or max pooling with packed=False")
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=padding_idx)
        self.rnn = cells[cell](embedding_dim, hidden_size, num_layers=num_layers, batch_first=True,
                               bidirectional=bidirectional, dropout=dropout if num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.pooling = pooling
        self.packed = packed
        self.embed_dim = hidden_size * (2 if bidirectional else 1)
        self.head = nn.Linear(self.embed_dim, num_classes)

    def features(self, batch: Batch) -> torch.Tensor:
        input_ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(input_ids)
        lengths = mask.sum(dim=1).clamp(min=1)
        embedded = self.dropout(self.embedding(input_ids))
        if self.packed:
            packed = nn.utils.rnn.pack_padded_sequence(embedded, lengths.cpu(), batch_first=True,
                                                       enforce_sorted=False)
            packed_out, state = self.rnn(packed)
            outputs, _ = nn.utils.rnn.pad_packed_sequence(packed_out, batch_first=True,
                                                          total_length=input_ids.shape[1])
        else:
            outputs, state = self.rnn(embedded)
        if self.pooling == "last":
            hidden = state[0] if isinstance(state, tuple) else state  # LSTM returns (h, c)
            directions = 2 if self.rnn.bidirectional else 1
            return torch.cat(list(hidden[-directions:]), dim=-1)
        if self.pooling == "max":
            return outputs.masked_fill(~mask.bool().unsqueeze(-1), float("-inf")).amax(dim=1)
        return masked_mean(outputs, mask)

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.head(self.dropout(self.features(batch)))
