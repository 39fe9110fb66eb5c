"""The models: a small CNN teacher, and a student of this project's own design (a strided
convolution of `width` channels and a linear read-out), built by a factory kdsearch calls as
make_student(width=W, **student.kwargs)."""

from torch import nn


class SmallCNN(nn.Module):
    """Three 3x3 convolutions with BatchNorm on 1 x 8 x 8 inputs."""

    def __init__(self, channels: int = 32, num_classes: int = 10):
        super().__init__()
        c = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(2 * c, num_classes)

    def forward(self, x):
        return self.head(self.features(x))


class ConvStudent(nn.Module):
    """A strided 3x3 convolution of `width` channels (8x8 -> 4x4), then a linear layer."""

    def __init__(self, width: int, num_classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, stride=2, padding=1)
        self.head = nn.Linear(width * 16, num_classes)

    def forward(self, x):
        return self.head(self.conv(x).relu().flatten(1))


def make_student(width: int, num_classes: int = 10) -> nn.Module:
    return ConvStudent(width, num_classes)
