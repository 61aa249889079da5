"""The character LSTM of LEAF's Shakespeare task, the FedMut paper's fourth data set."""

from __future__ import annotations

from torch import Tensor, nn

from lightning_fedmut.models.classifier import Classifier


class _NextCharacter(nn.Module):
    """Embedding, a 2-layer LSTM and a linear head over the last position: the next character's logits."""

    def __init__(self, vocab: int, embedding: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embedding)
        self.lstm = nn.LSTM(embedding, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.lstm(self.embed(x))
        return self.head(out[:, -1])


def char_lstm(vocab: int = 80, embedding: int = 8, hidden: int = 256, layers: int = 2) -> nn.Module:
    """LEAF's Shakespeare model: 8-dimensional embeddings, two LSTM layers of 256 units, logits over 80 letters.

    Examples:
        >>> import torch
        >>> char_lstm(hidden=16)(torch.zeros(3, 80, dtype=torch.long)).shape
        torch.Size([3, 80])
    """
    return _NextCharacter(vocab, embedding, hidden, layers)


class CharLSTM(Classifier):
    """:class:`Classifier` around :func:`char_lstm`: next-character prediction on LEAF's Shakespeare.

    Examples:
        >>> CharLSTM(hidden=16).hparams.hidden
        16
    """

    def __init__(self, vocab: int = 80, embedding: int = 8, hidden: int = 256, layers: int = 2, lr: float = 0.8,
                 momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        super().__init__(char_lstm(vocab, embedding, hidden, layers), num_classes=vocab, lr=lr, momentum=momentum,
                         weight_decay=weight_decay)
        self.save_hyperparameters()
