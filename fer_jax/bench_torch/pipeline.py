"""The reference's whole training input in PyTorch, end to end: the baseline for an epoch.

    python -m fer_jax.bench_torch.pipeline --data fer2013.csv.gz --batches 40 --workers 2

`reference` times the model step alone on random input. This times what a user of the reference
waits for: FER2013 Training faces (read by fer_jax.data.csv, the project's one CSV reader), the
reference's 11 training transforms applied per face on the CPU (PIL, torchvision, OpenCV) in
DataLoader workers, and the train step. The reference names its 11 steps but not their
magnitudes beyond rotation by 20 degrees with fill 128; the others below are plain choices for
48x48 faces (they matter little for timing).

Prints one JSON line, in images per second: augment_images_per_s (the 11 transforms alone,
DataLoader, no model), train_images_per_s (the step alone on ready tensors, as `reference`) and
epoch_images_per_s (transforms and step together, as an epoch runs).
"""
import argparse
import json
import time

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from fer_jax.bench_torch.reference import EnhancedCNN48, make_train_step


class CLAHE:
  """Step 8: OpenCV's contrast-limited adaptive histogram equalisation, with probability p."""

  def __init__(self, clip_limit: float = 2.0, tiles: int = 4, p: float = 0.5):
    self.clahe = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tiles, tiles))
    self.p = p

  def __call__(self, image: Image.Image) -> Image.Image:
    if np.random.rand() >= self.p:
      return image
    return Image.fromarray(self.clahe.apply(np.asarray(image)))


class GaussianNoise:
  """Step 11: additive Gaussian noise on the normalised tensor, with probability p."""

  def __init__(self, std: float = 0.05, p: float = 0.5):
    self.std, self.p = std, p

  def __call__(self, x: torch.Tensor) -> torch.Tensor:
    if torch.rand(()) >= self.p:
      return x
    return (x + torch.randn_like(x) * self.std).clamp(-1, 1)


def train_transforms() -> transforms.Compose:
  """The reference's 11 steps, in its order."""
  return transforms.Compose([
      transforms.RandomHorizontalFlip(p=0.5),                                         # 1
      transforms.RandomRotation(degrees=20, fill=128),                                # 2
      transforms.RandomAffine(degrees=0, translate=(0.1, 0.1), scale=(0.9, 1.1), shear=10,
                              fill=128),                                              # 3
      transforms.RandomPerspective(distortion_scale=0.1, p=0.5, fill=128),            # 4
      transforms.ColorJitter(contrast=0.3),                                           # 5
      transforms.ColorJitter(brightness=0.3),                                         # 6
      transforms.RandomAdjustSharpness(sharpness_factor=2.0, p=0.5),                  # 7
      CLAHE(),                                                                        # 8
      transforms.ToTensor(),                                                          # 9
      transforms.Normalize(mean=[0.5], std=[0.5]),                                    # 10
      GaussianNoise(),                                                                # 11
  ])


class TrainingFaces(Dataset):
  """The first `limit` Training faces of a FER2013 CSV, as PIL images through `transform`."""

  def __init__(self, path: str, limit: int, transform: transforms.Compose):
    from fer_jax.data.csv import read_fer2013_csv
    images, labels = read_fer2013_csv(path)['Training']
    self.faces, self.labels = images[:limit, ..., 0], labels[:limit].tolist()
    self.transform = transform

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, i: int):
    return self.transform(Image.fromarray(self.faces[i], mode='L')), self.labels[i]


def images_per_second(loader: DataLoader, batches: int, step=None) -> float:
  """Batches drawn (and stepped on) per second, after 2 warm-up batches (worker start-up)."""
  batches_iter = iter(loader)
  for _ in range(2):
    x, y = next(batches_iter)
    if step:
      step(x, y)
  start, count = time.perf_counter(), 0
  for _ in range(batches):
    x, y = next(batches_iter)
    if step:
      step(x, y)
    count += len(y)
  return count / (time.perf_counter() - start)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--data', required=True, help='FER2013 CSV (.csv or .csv.gz) with Training rows')
  parser.add_argument('--batch-size', type=int, default=32, help='the reference trains with 32')
  parser.add_argument('--batches', type=int, default=40)
  parser.add_argument('--workers', type=int, default=2, help='DataLoader workers (0: in this process)')
  parser.add_argument('--device', default='cpu', help='where the model steps (transforms stay on CPU)')
  args = parser.parse_args()
  torch.manual_seed(0)
  np.random.seed(0)
  device = torch.device(args.device)
  faces = TrainingFaces(args.data, (args.batches + 4) * args.batch_size, train_transforms())
  loader = DataLoader(faces, batch_size=args.batch_size, shuffle=True, drop_last=True,
                      num_workers=args.workers, persistent_workers=args.workers > 0)
  model = EnhancedCNN48().to(device).train()
  step = make_train_step(model, device)
  augment = images_per_second(loader, args.batches)
  x = torch.randn(args.batch_size, 1, 48, 48)
  y = torch.randint(0, 7, (args.batch_size,))
  for _ in range(3):
    step(x, y)
  start = time.perf_counter()
  for _ in range(args.batches):
    step(x, y)
  train = args.batches * args.batch_size / (time.perf_counter() - start)
  epoch = images_per_second(loader, args.batches, step)
  print(json.dumps({
      'framework': 'pytorch', 'torch': torch.__version__, 'device': str(device),
      'threads': torch.get_num_threads(), 'workers': args.workers, 'batch_size': args.batch_size,
      'augment_images_per_s': round(augment, 1), 'train_images_per_s': round(train, 1),
      'epoch_images_per_s': round(epoch, 1)}))


if __name__ == '__main__':
  main()
