"""The reference's EnhancedCNNGrayscale48 in PyTorch: its train step and inference, timed.

    python -m fer_jax.bench_torch.reference --batch-size 64 --steps 20 [--device cuda]

The model is fer_jax.models.cnn48 written in torch.nn, layer for layer: 12 3x3 convs with
BatchNorm and ReLU in five blocks (4 max pools, Dropout2d after each block), global average
pooling, 4 dense layers with dropout, BatchNorm and ReLU, then the 7-way output. The optimiser is
the reference's: Adam, backbone at 1e-5, head at 1e-3, weight decay 1e-4. Input is random
(batch, 1, 48, 48) faces, so this times the model alone; `pipeline` adds the data.

Prints one JSON line: framework, torch version, device, threads, batch_size, params,
train_images_per_s and eval_images_per_s (after 3 warm-up calls each).
"""
import argparse
import json
import time

import torch
from torch import nn

# (output channels, 3x3 convs, max pool after the block, Dropout2d rate): cnn48's CONV_BLOCKS with
# dropout_rate 0.5 times its CONV_DROPOUT_SCALE.
CONV_BLOCKS = ((32, 2, True, 0.1), (64, 2, True, 0.125), (128, 3, True, 0.15),
               (256, 3, True, 0.175), (512, 2, False, 0.2))
# (width, dropout rate before the layer): cnn48's HEAD_WIDTHS and HEAD_DROPOUT_SCALE.
HEAD = ((1024, 0.5), (512, 0.35), (256, 0.25), (128, 0.15))
NUM_CLASSES = 7


class EnhancedCNN48(nn.Module):
  """(batch, 1, 48, 48) faces in [-1, 1] -> (batch, 7) logits; `features` is the backbone and
  `classifier` the head, which the optimiser gives separate learning rates."""

  def __init__(self, num_classes: int = NUM_CLASSES):
    super().__init__()
    layers, channels = [], 1
    for width, convs, pool, rate in CONV_BLOCKS:
      for _ in range(convs):
        layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width),
                   nn.ReLU(inplace=True)]
        channels = width
      if pool:
        layers.append(nn.MaxPool2d(2))
      layers.append(nn.Dropout2d(rate))
    layers.append(nn.AdaptiveAvgPool2d(1))
    self.features = nn.Sequential(*layers)
    head = [nn.Flatten()]
    for width, rate in HEAD:
      head += [nn.Dropout(rate), nn.Linear(channels, width), nn.BatchNorm1d(width),
               nn.ReLU(inplace=True)]
      channels = width
    head.append(nn.Linear(channels, num_classes))
    self.classifier = nn.Sequential(*head)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.classifier(self.features(x))


def create_optimizer(model: EnhancedCNN48) -> torch.optim.Optimizer:
  """The reference's Adam: backbone 1e-5, head 1e-3, weight decay 1e-4 (L2, as torch's Adam)."""
  return torch.optim.Adam([{'params': model.features.parameters(), 'lr': 1e-5},
                           {'params': model.classifier.parameters(), 'lr': 1e-3}],
                          weight_decay=1e-4)


def make_train_step(model: EnhancedCNN48, device: torch.device):
  """step(x, y): one optimiser step on a batch, finished on the device before it returns."""
  optimizer = create_optimizer(model)
  loss_fn = nn.CrossEntropyLoss()

  def step(x: torch.Tensor, y: torch.Tensor) -> None:
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    optimizer.zero_grad(set_to_none=True)
    loss_fn(model(x), y).backward()
    optimizer.step()
    synchronize(device)
  return step


def synchronize(device: torch.device) -> None:
  if device.type == 'cuda':
    torch.cuda.synchronize()


def images_per_second(run, batch_size: int, steps: int, warmup: int = 3) -> float:
  for _ in range(warmup):
    run()
  start = time.perf_counter()
  for _ in range(steps):
    run()
  return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch-size', type=int, default=64)
  parser.add_argument('--steps', type=int, default=20, help='timed calls, after 3 warm-up calls')
  parser.add_argument('--device', default='cpu', help='cpu or cuda')
  args = parser.parse_args()
  torch.manual_seed(0)
  device = torch.device(args.device)
  model = EnhancedCNN48().to(device)
  x = torch.randn(args.batch_size, 1, 48, 48, device=device)
  y = torch.randint(0, NUM_CLASSES, (args.batch_size,), device=device)
  step = make_train_step(model, device)
  model.train()
  train = images_per_second(lambda: step(x, y), args.batch_size, args.steps)
  model.eval()

  def infer() -> None:
    model(x)
    synchronize(device)
  with torch.no_grad():
    inference = images_per_second(infer, args.batch_size, args.steps)
  print(json.dumps({
      'framework': 'pytorch', 'torch': torch.__version__, 'device': str(device),
      'threads': torch.get_num_threads(), 'batch_size': args.batch_size,
      'params': sum(p.numel() for p in model.parameters()),
      'train_images_per_s': round(train, 1), 'eval_images_per_s': round(inference, 1)}))


if __name__ == '__main__':
  main()
