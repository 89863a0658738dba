"""Trained sequence models over per-cycle vectors (torch): the LSTM head and a small CNN.

Input: one sequence per cell, ``X[cell, t]`` = the vector of cycle ``start + t`` (a cycle's Qd(V) difference
curve, or its embedding); a row (cell, n) asks for a prediction from that cell's cycles up to n.

* ``lstm``: a stacked LSTM run over the whole sequence; the prediction for row (cell, n) is a linear read-out
  of the hidden state at cycle n (causal: it has seen cycles up to n only). BatteryML's LSTM and the
  original downstream tool's LSTM head read the last hidden state the same way.
* ``cnn``: BatteryML-style 2-D convolution over the (cycle x feature) image of the ``window`` cycles ending at
  n (``window`` = the shortest history any row has), pooled, then a small MLP.

Features are standardised with the train rows' cycles, the target with the train rows; full-batch AdamW for
``epochs`` steps, seeded (``torch.manual_seed``) so a seed gives the same fit on the same machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class SequenceFit:
    model: str
    predictions: np.ndarray  # per row, in the fitting space
    train_rmse: float
    hyperparameters: dict


def fit_predict_sequence(model: str, X: np.ndarray, row_cell: np.ndarray, row_pos: np.ndarray, y: np.ndarray,
                         train: np.ndarray, *, seed: int, hidden: int = 32, layers: int = 2, epochs: int = 200,
                         lr: float = 3e-3, weight_decay: float = 1e-3) -> SequenceFit:
    """Fit ``model`` on the train rows and predict every row.

    ``X`` (cells, T, F) float; ``row_cell`` / ``row_pos`` per row: index into X's cells and time position;
    ``y`` per row (fitting space; only train rows are read); ``train`` bool per row.
    """
    if model not in ("lstm", "cnn"):
        raise ValueError(f"unknown sequence model {model!r}")
    torch.manual_seed(seed)
    X = np.asarray(X, dtype=np.float32)
    row_cell = np.asarray(row_cell, dtype=np.int64)
    row_pos = np.asarray(row_pos, dtype=np.int64)
    train = np.asarray(train, dtype=bool)
    mu, sd = standardisation(X, row_cell, row_pos, train)
    Xs = torch.from_numpy((X - mu) / sd)
    y_mu, y_sd = float(y[train].mean()), float(y[train].std() + 1e-9)
    yt = torch.from_numpy(((np.asarray(y, dtype=np.float64) - y_mu) / y_sd).astype(np.float32))
    n_feat = X.shape[2]
    hp = {"hidden": hidden, "epochs": epochs, "lr": lr, "weight_decay": weight_decay}
    if model == "lstm":
        hp["layers"] = layers
        net = LSTMHead(n_feat, hidden, layers)
        pos_t = torch.from_numpy(row_pos)
        used = np.unique(row_cell)

        def forward(rows: np.ndarray):
            return net.read_out(net(Xs[torch.from_numpy(used)]), np.searchsorted(used, row_cell[rows]), pos_t[rows])
    else:
        window = int(row_pos.min()) + 1
        hp["window"] = window
        starts = row_pos - window + 1
        idx = starts[:, None] + np.arange(window)[None, :]
        windows = Xs[torch.from_numpy(np.repeat(row_cell[:, None], window, 1)), torch.from_numpy(idx)]
        net = _CNN(window, n_feat, hidden)

        def forward(rows: np.ndarray):
            return net(windows[torch.from_numpy(rows)])

    loss = train_full_batch(net, forward, np.flatnonzero(train), yt, epochs=epochs, lr=lr, weight_decay=weight_decay)
    with torch.no_grad():
        pred = forward(np.arange(len(row_cell))).double().numpy() * y_sd + y_mu
    return SequenceFit(model=model, predictions=pred, train_rmse=math.sqrt(loss) * y_sd, hyperparameters=hp)


def standardisation(X: np.ndarray, row_cell: np.ndarray, row_pos: np.ndarray, train: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of the features over the cycles the train rows may read."""
    seen = np.zeros(X.shape[:2], dtype=bool)
    for c, p in zip(row_cell[train], row_pos[train]):
        seen[c, : p + 1] = True
    return X[seen].mean(0), X[seen].std(0) + 1e-6


def train_full_batch(net: nn.Module, forward, rows: np.ndarray, yt: torch.Tensor, *, epochs: int, lr: float,
                     weight_decay: float, monitor: np.ndarray | None = None) -> float:
    """``epochs`` full-batch AdamW steps on the MSE of ``forward(rows)`` against ``yt[rows]`` (gradients clipped
    to norm 1); the last step's loss. With ``monitor`` rows, the weights of the step with their lowest MSE are
    kept (early stopping). Leaves ``net`` in eval mode."""
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    loss = torch.tensor(float("nan"))
    best, best_state = math.inf, None
    for _ in range(epochs):
        net.train()
        opt.zero_grad()
        loss = nn.functional.mse_loss(forward(rows), yt[rows])
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        if monitor is not None and monitor.size:
            net.eval()
            with torch.no_grad():
                watched = float(nn.functional.mse_loss(forward(monitor), yt[monitor]))
            if watched < best:
                best, best_state = watched, {k: v.detach().clone() for k, v in net.state_dict().items()}
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    return float(loss.item())


class LSTMHead(nn.Module):
    """Stacked LSTM over (cells, T, F) with a linear read-out at every step: (cells, T) predictions."""

    def __init__(self, n_feat: int, hidden: int, layers: int):
        super().__init__()
        self.rnn = nn.LSTM(n_feat, hidden, num_layers=layers, batch_first=True)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x):
        h, _ = self.rnn(x)
        return self.out(h).squeeze(-1)  # (cells, T): a prediction at every cycle

    @staticmethod
    def read_out(out: torch.Tensor, cell: np.ndarray, pos) -> torch.Tensor:
        """The predictions of rows (cell index into ``out``, position): causal, each has seen cycles <= pos."""
        return out[torch.as_tensor(cell), torch.as_tensor(pos)]


class _CNN(nn.Module):
    def __init__(self, window: int, n_feat: int, hidden: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 8, kernel_size=(3, 5), padding=(1, 2)), nn.ReLU(),
            nn.Conv2d(8, 16, kernel_size=(3, 5), stride=(2, 2), padding=(1, 2)), nn.ReLU(),
            nn.AdaptiveAvgPool2d((4, 4)), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(16 * 16, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x):  # (rows, window, F)
        return self.head(self.conv(x.unsqueeze(1))).squeeze(-1)
