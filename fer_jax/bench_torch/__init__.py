"""The PyTorch baselines `python -m fer_jax.bench` times beside fer_jax, in the same run.

`reference`: the reference's EnhancedCNNGrayscale48 and its optimiser in PyTorch, layer for layer
as fer_jax.models.cnn48 builds it; a train step and an eval-mode forward pass on random faces.
`pipeline`: the reference's whole training input in PyTorch: FER2013 Training faces through its 11
transforms (PIL, torchvision, OpenCV) in DataLoader workers, then the step. Each runs as a
subprocess and prints one JSON line; both need `pip install "fer_jax[bench]"` (torch,
torchvision). Nothing here imports JAX, and nothing else in fer_jax imports this package.
"""
