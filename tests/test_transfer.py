"""Transfer backbones and ImageNet weight import: files in each format with the real layer names
and shapes (random values, written here with h5py / safetensors / numpy), checked against numpy
cross-correlations computed from the raw file arrays."""
import h5py
import jax
import ml_collections
import numpy as np
import pytest
from safetensors.numpy import save_file

from configs import transfer_vgg16, upsampled_224_rgb
from fer_jax import FerJaxError, config_checks, models, optim, train
from fer_jax.models import weights
from tests.conftest import generated_smoke_config

# The architectures as their libraries define them, written out here independently of
# fer_jax.models.weights: torchvision's vgg16.features indices and channels, ResNet stages.
TORCH_VGG16 = [(0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256),
               (12, 256, 256), (14, 256, 256), (17, 256, 512), (19, 512, 512), (21, 512, 512),
               (24, 512, 512), (26, 512, 512), (28, 512, 512)]
KERAS_VGG16 = ['block1_conv1', 'block1_conv2', 'block2_conv1', 'block2_conv2', 'block3_conv1',
               'block3_conv2', 'block3_conv3', 'block4_conv1', 'block4_conv2', 'block4_conv3',
               'block5_conv1', 'block5_conv2', 'block5_conv3']
# Published parameter counts without the classifier (torchvision), minus the first conv's two
# dropped input channels: vgg16 14,714,688 - 2*64*9; resnet18 11,176,512 and resnet50 23,508,032
# - 2*64*49.
BACKBONE_PARAMS = {'vgg16': 14_713_536, 'resnet18': 11_170_240, 'resnet50': 23_501_760}


def _config(name: str) -> ml_collections.ConfigDict:
  config = transfer_vgg16.get_config()
  config.model.name = name
  return config


def _init(name: str, **model_fields):
  config = _config(name)
  config.model.update(model_fields)
  model = models.create_model(config.model)
  return model, jax.device_get(models.init_variables(model, jax.random.PRNGKey(0)))


def torch_vgg16_state(rng) -> dict[str, np.ndarray]:
  state = {}
  for index, cin, cout in TORCH_VGG16:
    state[f'features.{index}.weight'] = rng.normal(0, 0.05, (cout, cin, 3, 3)).astype(np.float32)
    state[f'features.{index}.bias'] = rng.normal(0, 0.05, cout).astype(np.float32)
  return state


def torch_resnet_state(rng, arch: str) -> dict[str, np.ndarray]:
  """torchvision's resnet state_dict names and shapes (fc included, num_batches_tracked too)."""
  bottleneck = arch == 'resnet50'
  blocks = (3, 4, 6, 3) if bottleneck else (2, 2, 2, 2)
  state = {}

  def conv_bn(prefix_conv, prefix_bn, cout, cin, size):
    state[f'{prefix_conv}.weight'] = rng.normal(0, 0.05, (cout, cin, size, size)).astype(np.float32)
    state[f'{prefix_bn}.weight'] = rng.uniform(0.5, 1.5, cout).astype(np.float32)
    state[f'{prefix_bn}.bias'] = rng.normal(0, 0.1, cout).astype(np.float32)
    state[f'{prefix_bn}.running_mean'] = rng.normal(0, 0.1, cout).astype(np.float32)
    state[f'{prefix_bn}.running_var'] = rng.uniform(0.5, 2.0, cout).astype(np.float32)
    state[f'{prefix_bn}.num_batches_tracked'] = np.array(100, np.int64)

  conv_bn('conv1', 'bn1', 64, 3, 7)
  cin = 64
  for stage, count in enumerate(blocks, start=1):
    width = 64 * 2 ** (stage - 1)
    cout = width * 4 if bottleneck else width
    for block in range(count):
      p = f'layer{stage}.{block}'
      if bottleneck:
        shapes = [(width, cin, 1), (width, width, 3), (cout, width, 1)]
      else:
        shapes = [(width, cin, 3), (width, width, 3)]
      for i, shape in enumerate(shapes, start=1):
        conv_bn(f'{p}.conv{i}', f'{p}.bn{i}', *shape)
      if block == 0 and cin != cout or block == 0 and stage > 1:
        conv_bn(f'{p}.downsample.0', f'{p}.downsample.1', cout, cin, 1)
      cin = cout
  state['fc.weight'] = rng.normal(0, 0.01, (1000, cin)).astype(np.float32)
  state['fc.bias'] = np.zeros(1000, np.float32)
  return state


def write_keras_h5(path, layers: dict[str, dict[str, np.ndarray]]) -> None:
  """Keras 2's save_weights layout: layer_names on the root, weight_names on each layer group,
  datasets at <layer>/<layer>/<weight>:0; weightless layers listed with no weights."""
  with h5py.File(path, 'w') as f:
    names = ['input_1'] + list(layers) + ['block5_pool']
    f.attrs['layer_names'] = [n.encode() for n in names]
    f.attrs['backend'] = b'tensorflow'
    for name in names:
      group = f.create_group(name)
      weight_names = []
      for weight, value in layers.get(name, {}).items():
        full = f'{name}/{weight}:0'
        group.create_dataset(full, data=value)
        weight_names.append(full.encode())
      group.attrs['weight_names'] = weight_names


def keras_vgg16_layers(rng) -> dict[str, dict[str, np.ndarray]]:
  return {name: {'kernel': rng.normal(0, 0.05, (3, 3, cin, cout)).astype(np.float32),
                 'bias': rng.normal(0, 0.05, cout).astype(np.float32)}
          for name, (_, cin, cout) in zip(KERAS_VGG16, TORCH_VGG16)}


def keras_resnet50_layers(rng) -> dict[str, dict[str, np.ndarray]]:
  """Keras ResNet50's names (conv2_block1_1_conv, ..., _0_ shortcut), convs with biases."""
  torch_state = torch_resnet_state(rng, 'resnet50')
  layers = {}

  def add(conv, bn, torch_conv, torch_bn):
    kernel = torch_state[f'{torch_conv}.weight']
    layers[conv] = {'kernel': np.transpose(kernel, (2, 3, 1, 0)),
                    'bias': rng.normal(0, 0.1, kernel.shape[0]).astype(np.float32)}
    layers[bn] = {k: torch_state[f'{torch_bn}.{t}'] for k, t in (
        ('gamma', 'weight'), ('beta', 'bias'), ('moving_mean', 'running_mean'),
        ('moving_variance', 'running_var'))}

  add('conv1_conv', 'conv1_bn', 'conv1', 'bn1')
  for stage, count in enumerate((3, 4, 6, 3), start=1):
    for block in range(count):
      k, t = f'conv{stage + 1}_block{block + 1}', f'layer{stage}.{block}'
      if block == 0:
        add(f'{k}_0_conv', f'{k}_0_bn', f'{t}.downsample.0', f'{t}.downsample.1')
      for i in (1, 2, 3):
        add(f'{k}_{i}_conv', f'{k}_{i}_bn', f'{t}.conv{i}', f'{t}.bn{i}')
  return layers


def correlate(x: np.ndarray, kernel_oihw: np.ndarray, stride: int = 1) -> np.ndarray:
  """NHWC cross-correlation (no kernel flip), 'same'-style padding k//2, from an OIHW kernel."""
  size = kernel_oihw.shape[-1]
  pad = size // 2
  x = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  out_h = (x.shape[1] - size) // stride + 1
  out_w = (x.shape[2] - size) // stride + 1
  out = np.zeros((x.shape[0], out_h, out_w, kernel_oihw.shape[0]))
  for dy in range(size):
    for dx in range(size):
      patch = x[:, dy:dy + stride * out_h:stride, dx:dx + stride * out_w:stride, :]
      out += np.einsum('nhwi,oi->nhwo', patch, kernel_oihw[:, :, dy, dx])
  return out


def _intermediates(model, variables, faces):
  _, state = model.apply(variables, faces, train=False, capture_intermediates=True,
                         mutable=['intermediates'])
  return state['intermediates']['backbone']


@pytest.fixture(scope='module')
def vgg16_files(tmp_path_factory):
  rng = np.random.default_rng(0)
  folder = tmp_path_factory.mktemp('vgg16')
  torch_state = torch_vgg16_state(rng)
  save_file(torch_state, str(folder / 'vgg16.safetensors'))
  np.savez(folder / 'vgg16.npz', **torch_state)
  keras_layers = keras_vgg16_layers(rng)
  write_keras_h5(folder / 'vgg16_notop.h5', keras_layers)
  return folder, torch_state, keras_layers


def test_backbone_parameter_counts_match_the_published_models():
  for name, expected in BACKBONE_PARAMS.items():
    model = models.create_model(_config(name).model)
    shapes = jax.eval_shape(lambda: models.init_variables(model, jax.random.PRNGKey(0)))
    assert models.count_params(shapes['params']['backbone']) == expected
    logits = jax.eval_shape(lambda v: model.apply(v, np.zeros((2, 48, 48, 1), np.float32)), shapes)
    assert logits.shape == (2, 7)
  # The upsampled route carries VGG16's own classifier (torchvision's 123.6 M, 7 classes).
  config = upsampled_224_rgb.get_config()
  shapes = jax.eval_shape(lambda: models.init_variables(models.create_model(config.model),
                                                        jax.random.PRNGKey(0)))
  assert models.count_params(shapes['params']['head']) == (
      25088 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 7 + 7)
  assert models.count_params(shapes['params']['backbone']) == 14_714_688


@pytest.mark.parametrize('file_name', ['vgg16.safetensors', 'vgg16.npz', 'vgg16_notop.h5'])
def test_every_vgg16_layer_lands(vgg16_files, file_name):
  folder, torch_state, keras_layers = vgg16_files
  model, variables = _init('vgg16')
  loaded = weights.import_backbone(variables, 'vgg16', str(folder / file_name))
  backbone = loaded['params']['backbone']
  for (index, _, _), name in zip(TORCH_VGG16, KERAS_VGG16):
    if file_name.endswith('.h5'):
      kernel, bias = keras_layers[name]['kernel'], keras_layers[name]['bias']
    else:
      kernel = np.transpose(torch_state[f'features.{index}.weight'], (2, 3, 1, 0))
      bias = torch_state[f'features.{index}.bias']
    if name == 'block1_conv1':
      kernel = kernel.sum(axis=2, keepdims=True)
    np.testing.assert_array_equal(backbone[name]['kernel'], kernel)
    np.testing.assert_array_equal(backbone[name]['bias'], bias)
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded['params']['head'],
                         variables['params']['head'])


@pytest.mark.parametrize('source', ['torchvision', 'keras'])
def test_imported_convs_equal_numpy_cross_correlation_and_grey_equals_rgb(vgg16_files, source):
  folder, torch_state, keras_layers = vgg16_files
  model, variables = _init('vgg16')
  path = folder / ('vgg16.npz' if source == 'torchvision' else 'vgg16_notop.h5')
  loaded = weights.import_backbone(variables, 'vgg16', str(path))
  faces = np.random.default_rng(1).uniform(-1, 1, (2, 48, 48, 1)).astype(np.float32)
  captured = _intermediates(model, loaded, faces)
  if source == 'torchvision':
    raw1, bias1 = torch_state['features.0.weight'], torch_state['features.0.bias']
    raw2, bias2 = torch_state['features.2.weight'], torch_state['features.2.bias']
  else:  # HWIO in the file
    raw1 = np.transpose(keras_layers['block1_conv1']['kernel'], (3, 2, 0, 1))
    raw2 = np.transpose(keras_layers['block1_conv2']['kernel'], (3, 2, 0, 1))
    bias1, bias2 = keras_layers['block1_conv1']['bias'], keras_layers['block1_conv2']['bias']
  conv1 = np.asarray(captured['block1_conv1']['__call__'][0])
  # The one-channel conv on grey == the file's RGB conv on the grey face repeated on 3 channels.
  rgb = correlate(np.repeat(faces, 3, axis=-1), raw1) + bias1
  np.testing.assert_allclose(conv1, rgb, rtol=1e-4, atol=1e-4)
  conv2 = np.asarray(captured['block1_conv2']['__call__'][0])
  np.testing.assert_allclose(conv2, correlate(np.maximum(conv1, 0), raw2) + bias2,
                             rtol=1e-4, atol=1e-4)


def test_luminance_first_conv_uses_the_files_channel_order(vgg16_files):
  folder, torch_state, keras_layers = vgg16_files
  _, variables = _init('vgg16')
  rgb_file = weights.import_backbone(variables, 'vgg16', str(folder / 'vgg16.npz'), 'luminance')
  kernel = np.transpose(torch_state['features.0.weight'], (2, 3, 1, 0))  # channels R, G, B
  np.testing.assert_allclose(rgb_file['params']['backbone']['block1_conv1']['kernel'][:, :, 0],
                             0.299 * kernel[:, :, 0] + 0.587 * kernel[:, :, 1] + 0.114 * kernel[:, :, 2],
                             rtol=1e-6)
  bgr_file = weights.import_backbone(variables, 'vgg16', str(folder / 'vgg16_notop.h5'), 'luminance')
  kernel = keras_layers['block1_conv1']['kernel']  # Keras' ImageNet VGG16 takes B, G, R
  np.testing.assert_allclose(bgr_file['params']['backbone']['block1_conv1']['kernel'][:, :, 0],
                             0.114 * kernel[:, :, 0] + 0.587 * kernel[:, :, 1] + 0.299 * kernel[:, :, 2],
                             rtol=1e-6)


@pytest.mark.parametrize('arch,extension', [('resnet18', 'npz'), ('resnet50', 'safetensors')])
def test_torchvision_resnets_land_with_their_batchnorm_statistics(tmp_path, arch, extension):
  state = torch_resnet_state(np.random.default_rng(2), arch)
  path = tmp_path / f'{arch}.{extension}'
  save_file(state, str(path)) if extension == 'safetensors' else np.savez(path, **state)
  model, variables = _init(arch)
  loaded = weights.import_backbone(variables, arch, str(path))
  flat = {'/'.join(k): v for k, v in
          __import__('flax').traverse_util.flatten_dict(loaded).items() if k[1] == 'backbone'}
  used = set()
  for key, value in flat.items():
    kind, _, *module, leaf = key.split('/')
    module = '.'.join(module).replace('_', '.').replace('downsample.conv', 'downsample.0') \
        .replace('downsample.bn', 'downsample.1')
    torch_leaf = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean',
                  'var': 'running_var'}[leaf]
    name = f'{module}.{torch_leaf}'
    expected = state[name]
    if expected.ndim == 4:
      expected = np.transpose(expected, (2, 3, 1, 0))
      if name == 'conv1.weight':
        expected = expected.sum(axis=2, keepdims=True)
    np.testing.assert_array_equal(value, expected, err_msg=key)
    used.add(name)
  unused = {n for n in state if n not in used and 'num_batches_tracked' not in n and
            not n.startswith('fc.')}
  assert not unused, f'file arrays that landed nowhere: {sorted(unused)[:5]}'
  # The stem: a 7x7 stride-2 conv, padding 3, as torchvision's.
  faces = np.random.default_rng(3).uniform(-1, 1, (1, 48, 48, 1)).astype(np.float32)
  stem = np.asarray(_intermediates(model, loaded, faces)['conv1']['__call__'][0])
  np.testing.assert_allclose(stem, correlate(np.repeat(faces, 3, -1), state['conv1.weight'], 2),
                             rtol=1e-4, atol=1e-4)


def test_keras_resnet50_folds_conv_biases_into_batchnorm_means(tmp_path):
  layers = keras_resnet50_layers(np.random.default_rng(4))
  path = tmp_path / 'resnet50_notop.h5'
  write_keras_h5(path, layers)
  _, variables = _init('resnet50')
  with pytest.raises(FerJaxError, match='stride_in_1x1=True'):
    weights.import_backbone(variables, 'resnet50', str(path))
  model, variables = _init('resnet50', stride_in_1x1=True)
  loaded = weights.import_backbone(variables, 'resnet50', str(path), stride_in_1x1=True)
  block = loaded['params']['backbone']['layer3_0']
  np.testing.assert_array_equal(block['conv2']['kernel'], layers['conv4_block1_2_conv']['kernel'])
  np.testing.assert_array_equal(block['downsample_bn']['scale'], layers['conv4_block1_0_bn']['gamma'])
  np.testing.assert_allclose(
      loaded['batch_stats']['backbone']['layer3_0']['bn2']['mean'],
      layers['conv4_block1_2_bn']['moving_mean'] - layers['conv4_block1_2_conv']['bias'], rtol=1e-6)
  # Folding is exact: eval-mode BN(conv + b) with mean m equals BN(conv) with mean m - b.
  x = np.random.default_rng(5).normal(size=(4, 2048)).astype(np.float32)
  bias, mean = layers['conv5_block3_3_conv']['bias'], layers['conv5_block3_3_bn']['moving_mean']
  np.testing.assert_allclose((x + bias) - mean, x - (mean - bias), rtol=1e-5, atol=1e-6)
  # Stride in the first 1x1 conv: the 3x3 keeps stride 1 (a 3x3 map after layer3_0's 1x1).
  captured = _intermediates(model, loaded, np.zeros((1, 48, 48, 1), np.float32))
  assert captured['layer3_0']['conv1']['__call__'][0].shape[1:3] == (3, 3)
  assert captured['layer3_0']['conv2']['__call__'][0].shape[1:3] == (3, 3)


def test_bad_weight_files_fail_clearly_and_change_nothing(vgg16_files, tmp_path):
  folder, torch_state, _ = vgg16_files
  _, variables = _init('vgg16')
  before = jax.tree_util.tree_map(np.copy, variables)
  missing = {k: v for k, v in torch_state.items() if k != 'features.19.weight'}
  np.savez(tmp_path / 'missing.npz', **missing)
  with pytest.raises(FerJaxError, match=r"no layer 'features.19.weight'.*block4_conv2/kernel"):
    weights.import_backbone(variables, 'vgg16', str(tmp_path / 'missing.npz'))
  wrong = dict(torch_state, **{'features.24.bias': np.zeros(256, np.float32)})
  np.savez(tmp_path / 'wrong.npz', **wrong)
  with pytest.raises(FerJaxError, match=r"'features.24.bias' has shape \(256,\).*expects \(512,\)"):
    weights.import_backbone(variables, 'vgg16', str(tmp_path / 'wrong.npz'))
  (tmp_path / 'weights.pth').write_bytes(b'not a supported format')
  with pytest.raises(FerJaxError, match=r'extension \.pth.*Keras \.h5'):
    weights.import_backbone(variables, 'vgg16', str(tmp_path / 'weights.pth'))
  (tmp_path / 'broken.h5').write_bytes(b'not hdf5')
  with pytest.raises(FerJaxError, match='broken.h5 is not a readable .h5 weight file'):
    weights.import_backbone(variables, 'vgg16', str(tmp_path / 'broken.h5'))
  with pytest.raises(FerJaxError, match='vgg16_notop.h5 is a Keras file'):
    weights.import_backbone(_init('resnet18')[1], 'resnet18', str(folder / 'vgg16_notop.h5'))
  with pytest.raises(FerJaxError, match=r"no layer 'bn1.running_mean'.*pass torchvision resnet18"):  # a VGG file for a ResNet
    weights.import_backbone(_init('resnet18')[1], 'resnet18', str(folder / 'vgg16.npz'))
  jax.tree_util.tree_map(np.testing.assert_array_equal, variables, before)


def test_config_errors_name_the_field(tmp_path):
  config = _config('cnn48')
  config.model.pretrained_weights = str(tmp_path / 'x.npz')
  with pytest.raises(FerJaxError, match="config.model.name='cnn48' takes no ImageNet weights"):
    config_checks.validate(config)
  config.model.name = 'vgg16'
  with pytest.raises(FerJaxError, match=r'pretrained_weights=.*x.npz does not exist'):
    config_checks.validate(config)
  config = _config('vgg16')
  config.freeze_backbone_epochs = -1
  with pytest.raises(FerJaxError, match='freeze_backbone_epochs=-1'):
    config_checks.validate(config)


def test_pretrained_backbone_stays_frozen_for_its_epochs_and_the_head_trains(vgg16_files, tmp_path):
  folder, _, _ = vgg16_files
  config = generated_smoke_config(32, 16)
  config.model.name = 'vgg16'
  config.model.pretrained_weights = str(folder / 'vgg16.safetensors')
  config.batch_size, config.eval_batch_size, config.num_epochs = 16, 16, 1
  config.freeze_backbone_epochs = 1
  config.bn_recalibration_faces = 16
  state = train.train_and_evaluate(config, str(tmp_path / 'run'))
  lr_fns = optim.create_learning_rate_fns(config, steps_per_epoch=2)
  initial = train.create_train_state(jax.random.PRNGKey(config.seed), models.create_model(
      config.model), optim.create_optimizer(config, lr_fns), config.model)
  _, variables = _init('vgg16')
  imported = weights.import_backbone(variables, 'vgg16', config.model.pretrained_weights)
  params = jax.device_get(state.params)
  jax.tree_util.tree_map(np.testing.assert_array_equal, params['backbone'],
                         imported['params']['backbone'])
  assert int(state.step) == 2
  moved = jax.tree_util.tree_map(lambda a, b: float(np.abs(a - b).max()), params['head'],
                                 jax.device_get(initial.params['head']))
  assert min(jax.tree_util.tree_leaves(moved)) > 0  # every head tensor learned
  lr = lr_fns['backbone']
  assert float(lr(1)) == 0.0 and float(lr(2)) == pytest.approx(config.backbone_lr)
