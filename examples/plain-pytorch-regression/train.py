"""A small residual MLP regressor on scikit-learn's bundled diabetes data, under a greenknobs search.

The plain script is train_plain.py; `diff -u train_plain.py train.py` shows every line greenknobs needs.
Run the search: `greenknobs search examples/plain-pytorch-regression/experiment.yaml`.
"""

import torch
from sklearn.datasets import load_diabetes
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import greenknobs as gk


class Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.linear = nn.Linear(width, width)

    def forward(self, h):
        return h + torch.relu(self.linear(self.norm(h)))


class MLP(nn.Module):
    def __init__(self, features: int, width: int = 128, depth: int = 6):
        super().__init__()
        self.inp = nn.Linear(features, width)
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.out = nn.Linear(width, 1)

    def forward(self, x):
        h = self.inp(x)
        for block in self.blocks:
            h = block(h)
        return self.out(h).squeeze(-1)


def tensors(x, y):
    return TensorDataset(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32))


def rmse(model, loader):
    model.eval()
    squared, rows = 0.0, 0
    with torch.no_grad():
        for xb, yb in loader:
            squared += float(((model(xb) - yb) ** 2).sum())
            rows += len(yb)
    return (squared / rows) ** 0.5


def main():
    trial = gk.current_trial()
    trial.start_phase("data")
    x, y = load_diabetes(return_X_y=True, scaled=True)
    y = (y - y.mean()) / y.std()
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.4, random_state=0)
    x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, test_size=0.5, random_state=0)
    train_loader = trial.train_loader(DataLoader(tensors(x_train, y_train), batch_size=32, shuffle=True))
    val_loader = trial.eval_loader(DataLoader(tensors(x_val, y_val), batch_size=64))
    test_loader = DataLoader(tensors(x_test, y_test), batch_size=64)

    trial.start_phase("model")
    torch.manual_seed(0)
    model = trial.model(MLP(x.shape[1]))
    trial.start_phase("training")
    optimizer = trial.optimizer(torch.optim.AdamW(model.parameters(), lr=1e-3))
    epochs = trial.epochs(60)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=len(epochs) * len(train_loader))
    for _epoch in epochs:
        model.train()
        for xb, yb in train_loader:
            loss = nn.functional.mse_loss(model(xb), yb)
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()

    trial.start_phase("inference")
    trial.quality("validation", rmse=rmse(model, val_loader))
    trial.start_phase("test")
    trial.quality("test", rmse=rmse(model, test_loader))


if __name__ == "__main__":
    main()
