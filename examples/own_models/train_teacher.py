"""Train the teacher once and save its weights to teacher.pt, as a user would with their own
training code; kdsearch then loads it (teacher.checkpoint in space.yaml) and never retrains it.

    python train_teacher.py       # ~20 s on a 2-core CPU
"""

from pathlib import Path

import torch
import torch.nn.functional as F

from my_data import load
from my_nets import SmallCNN


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def main() -> None:
    torch.manual_seed(0)
    data = load()
    x, y = (torch.as_tensor(a) for a in data["train"])
    xt, yt = (torch.as_tensor(a) for a in data["test"])
    model = SmallCNN(channels=32)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for epoch in range(30):
        model.train()
        for idx in torch.randperm(len(y)).split(64):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    path = Path(__file__).resolve().parent / "teacher.pt"
    torch.save(model.state_dict(), path)
    print(f"teacher: test accuracy {accuracy(model, xt, yt):.4f}; saved {path}")


if __name__ == "__main__":
    main()
