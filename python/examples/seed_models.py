"""The seed's two models, as their authors wrote them (tests/fixtures/generate.py
keeps the same classes): plain PyTorch, nothing of rnn-kernels in them."""

import torch
import torch.nn.utils.rnn as rnn_utils


class ICUTimeSeriesModel(torch.nn.Module):
    def __init__(self, n_features=6, hidden=64, layers=2):
        super().__init__()
        self.lstm = torch.nn.LSTM(n_features, hidden, num_layers=layers, batch_first=True, dropout=0.2)
        self.head = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(hidden, 32), torch.nn.ReLU(),
                                        torch.nn.Linear(32, 1))

    def forward(self, x, lengths):
        packed = rnn_utils.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        _, (hn, _) = self.lstm(packed)
        return torch.sigmoid(self.head(hn[-1])).squeeze(-1)


class HybridClinicalModel(torch.nn.Module):
    """Vitals through the same LSTM, a note embedding (a BERT-style encoder's [CLS] vector)
    projected to the hidden size, the two concatenated into the head."""

    def __init__(self, n_features=6, hidden=64, embed=768):
        super().__init__()
        self.lstm = torch.nn.LSTM(n_features, hidden, num_layers=2, batch_first=True)
        self.text_proj = torch.nn.Linear(embed, hidden)
        self.head = torch.nn.Sequential(torch.nn.Linear(2 * hidden, 64), torch.nn.ReLU(), torch.nn.Dropout(0.3),
                                        torch.nn.Linear(64, 1))

    def forward(self, vitals, text_embed, lengths=None):
        h = last_hidden(self.lstm, vitals, lengths)
        return self.head(torch.cat([h, self.text_proj(text_embed)], -1))


def last_hidden(lstm, vitals, lengths):
    """h_n[-1]: each stay's last layer's state after its own last hour."""
    x = vitals if lengths is None else rnn_utils.pack_padded_sequence(
        vitals, lengths, batch_first=True, enforce_sorted=False)
    _, (h_n, _) = lstm(x)
    return h_n[-1]
