"""Any face dataset: an image-folder tree with its own classes trains through the one loop, and
fine-tuning starts from the shipped weights with only the last dense layer fresh."""
import os

import jax
import numpy as np
import pytest
from PIL import Image

from conftest import generated_smoke_config
from fer_jax import FerJaxError, checkpoint, config_checks, data, pretrained, train
from fer_jax.predictor import Predictor


def _folder(root, classes, per_class: int, seed: int = 0):
  """<root>/{train,validation}/<class>/*.png from generated cartoon faces (48 px crops)."""
  faces, labels = data.generated_faces(per_class * 7 * 4, seed)
  for split, start in (('train', 0), ('validation', 1)):
    for index, name in enumerate(classes):
      folder = root / split / name
      folder.mkdir(parents=True, exist_ok=True)
      chosen = np.nonzero(labels == index)[0][start::2][:per_class]
      for i in chosen:
        Image.fromarray(faces[i, ..., 0]).save(folder / f'{i}.png')
  return root


def _config(root, **fields):
  config = generated_smoke_config(64, 32)
  config.data.source, config.data.images_path = 'images', str(root)
  config.num_epochs, config.batch_size, config.eval_batch_size = 1, 16, 16
  config.bn_recalibration_faces = 32
  for field, value in fields.items():
    config[field] = value
  return config


def test_an_image_folder_with_three_classes_fine_tunes_from_the_shipped_weights(tmp_path):
  root = _folder(tmp_path / 'faces', ['happy', 'sad', 'neutral'], per_class=12)
  state = train.train_and_evaluate(_config(root, init_from='pretrained'), str(tmp_path / 'run'))
  _, meta = checkpoint.load_for_inference(str(tmp_path / 'run'), 'best')
  assert meta['label_map'] == {'0': 'happy', '1': 'sad', '2': 'neutral'}  # FER2013's order
  assert meta['model_config']['num_classes'] == 3
  shipped, _ = pretrained.load()
  # One step of 1e-3 from the shipped weights: the backbone is near them, not re-initialised.
  conv = np.asarray(jax.device_get(state.params['backbone']['Conv_0']['kernel']))
  assert np.abs(conv - shipped['params']['backbone']['Conv_0']['kernel']).max() < 0.02
  assert state.params['head']['Dense_4']['kernel'].shape == (128, 3)
  assert Predictor.from_workdir(str(tmp_path / 'run')).labels == ['happy', 'sad', 'neutral']


def test_same_classes_take_every_layer_and_bad_sources_are_one_sentence(tmp_path):
  root = _folder(tmp_path / 'faces', ['angry', 'disgust', 'fear', 'happy', 'sad', 'surprise',
                                      'neutral'], per_class=3)
  config = _config(root, init_from='pretrained', head_lr=0.0, backbone_lr=0.0)
  state = train.train_and_evaluate(config, str(tmp_path / 'run'))
  shipped, _ = pretrained.load()
  np.testing.assert_array_equal(jax.device_get(state.params['head']['Dense_4']['kernel']),
                                shipped['params']['head']['Dense_4']['kernel'])
  with pytest.raises(FerJaxError, match=r"config.init_from='nowhere' is neither \"pretrained\" nor a "
                                        r'workdir'):
    config_checks.validate(_config(root, init_from='nowhere'))


def test_bad_image_folders_are_one_sentence(tmp_path):
  root = _folder(tmp_path / 'faces', ['happy', 'sad'], per_class=2)
  (root / 'train' / 'happy' / 'notes.txt').write_text('x')
  with pytest.raises(FerJaxError, match=r'happy/notes.txt is not an image \(.txt\); move it out'):
    data.load_split(_config(root).data, 'train')
  os.remove(root / 'train' / 'happy' / 'notes.txt')
  (root / 'validation' / 'calm').mkdir()
  with pytest.raises(FerJaxError, match=r'validation/calm is empty'):
    data.load_split(_config(root).data, 'validation')
  (root / 'validation' / 'calm').rmdir()
  (root / 'validation' / 'surprise').mkdir()
  Image.new('L', (48, 48)).save(root / 'validation' / 'surprise' / 'x.png')
  with pytest.raises(FerJaxError, match=r'the train split has classes happy, sad but the validation '
                                        r'split has happy, sad, surprise'):
    train.train_and_evaluate(_config(root), str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run')


def _events(workdir) -> list:
  """Every event of a run's TensorBoard files, parsed with tensorboardX's own protobuf."""
  import glob
  import struct
  from tensorboardX.proto import event_pb2
  events = []
  for path in glob.glob(os.path.join(workdir, 'tensorboard', 'events.out.tfevents.*')):
    raw, offset = open(path, 'rb').read(), 0
    while offset < len(raw):
      (length,) = struct.unpack('<Q', raw[offset:offset + 8])
      event = event_pb2.Event()
      event.ParseFromString(raw[offset + 12:offset + 12 + length])
      events.append(event)
      offset += 12 + length + 4
  return events


def test_tensorboard_files_hold_every_epoch_metric_and_the_augmented_faces(tmp_path):
  config = generated_smoke_config(64, 32)
  config.num_epochs, config.eval_batch_size, config.log_every_steps = 2, 32, 1
  train.train_and_evaluate(config, str(tmp_path))
  values = {}
  images = []
  for event in _events(str(tmp_path)):
    for value in event.summary.value:
      if value.HasField('image'):
        images.append(value.tag)
      else:
        values.setdefault(value.tag, []).append((event.step, value.simple_value))
  history = [__import__('json').loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  assert values['eval/eval_accuracy'] == [(h['step'], pytest.approx(h['eval_accuracy'])) for h in history]
  assert [s for s, _ in values['train/loss_running']] == [1, 2, 3, 4]
  assert {'train/train_loss', 'learning_rate/head_lr', 'learning_rate/backbone_lr'} <= set(values)
  best, improvements = -1.0, 0  # a confusion matrix at every new best
  for record in history:
    improvements += record['selection_score'] > best
    best = max(best, record['selection_score'])
  assert images == ['augmented_faces'] + ['eval/confusion_matrix'] * improvements


def test_the_arrays_file_is_scored_like_the_csv(tmp_path):
  from fer_jax import evaluation
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (12, 48, 48), dtype=np.uint8)
  y, usage = rng.integers(0, 7, 12), np.array([0] * 8 + [1] * 4)
  np.savez(tmp_path / 'fer.npz', x=x, y=y, usage=usage)
  assert evaluation.default_split(str(tmp_path / 'fer.npz')) == 'validation'  # no PrivateTest
  faces, labels = evaluation.load_eval_data(str(tmp_path / 'fer.npz'), 'validation')
  np.testing.assert_array_equal(faces[..., 0], x[8:])
  np.testing.assert_array_equal(labels, y[8:])


def test_extra_evaluations_and_the_selection_metric_and_tta(tmp_path):
  from conftest import random_rows, write_csv
  csv_path = write_csv(tmp_path / 'extra.csv', random_rows(40, usages=('PublicTest',)))
  config = generated_smoke_config(64, 32)
  config.num_epochs, config.eval_batch_size = 2, 32
  config.select_metric, config.select_tta = 'macro_f1', 'flip'
  config.evals = f'extra={csv_path}'
  train.train_and_evaluate(config, str(tmp_path / 'run'))
  history = [__import__('json').loads(line) for line in open(tmp_path / 'run' / 'metrics.jsonl')]
  for record in history:
    assert record['selection_score'] == record['eval_macro_f1_flip']
    assert {'extra_accuracy', 'extra_macro_f1', 'extra_loss', 'eval_accuracy_flip'} <= set(record)
  _, meta = checkpoint.load_for_inference(str(tmp_path / 'run'), 'best')
  best = max(history, key=lambda r: r['selection_score'])  # the first of equal scores
  assert meta['run']['best']['best_epoch'] == best['epoch']
  images = [value.tag for event in _events(str(tmp_path / 'run')) for value in event.summary.value
            if value.HasField('image')]
  assert 'eval/confusion_matrix' in images
  with pytest.raises(FerJaxError, match=r"config.evals entry 'extra' is not name=path"):
    config_checks.validate(_config(tmp_path, evals='extra'))
  with pytest.raises(FerJaxError, match=r"config.select_metric='f1' is unknown"):
    config_checks.validate(_config(tmp_path, select_metric='f1'))


def test_the_training_command_on_an_image_folder_and_on_the_arrays_file(tmp_path):
  import subprocess
  import sys
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  root = _folder(tmp_path / 'faces', ['happy', 'sad'], per_class=16)
  faces, labels = data.generated_faces(96, 0)
  np.savez(tmp_path / 'fer.npz', x=faces[..., 0], y=labels, usage=np.array([0] * 64 + [1] * 32))
  common = ['--config.num_epochs=1', '--config.batch_size=16', '--config.eval_batch_size=16',
            '--config.bn_recalibration_faces=32', '--config.progress_bar=False']
  for name, overrides in (('folder', ['--config', 'configs/finetune.py',
                                      f'--config.data.images_path={root}']),
                          ('arrays', ['--config', 'configs/smoke.py', '--config.data.source=arrays',
                                      f'--config.data.arrays_path={tmp_path / "fer.npz"}'])):
    out = subprocess.run([sys.executable, '-m', 'fer_jax.main', '--workdir', str(tmp_path / name)]
                         + overrides + common, capture_output=True, text=True, cwd=repo)
    assert out.returncode == 0, out.stderr[-3000:]
  assert Predictor.from_workdir(str(tmp_path / 'folder')).labels == ['happy', 'sad']
  assert len(Predictor.from_workdir(str(tmp_path / 'arrays')).labels) == 7


@pytest.mark.parametrize('init_from,warns', [('pretrained', False), ('', True)])
def test_the_low_backbone_rate_warning_is_for_random_backbones_only(caplog, init_from, warns):
  """configs/finetune.py starts from the shipped weights: its 1e-4 backbone is no recipe fault."""
  from configs import finetune
  config = finetune.get_config()
  config.init_from = init_from
  with caplog.at_level('WARNING'):
    config_checks.warn_about_recipe(config)
  warned = [r.getMessage() for r in caplog.records if 'backbone_lr' in r.getMessage()]
  assert bool(warned) == warns, warned
  if warns:
    assert 'add --config.backbone_lr=0.001 to train it from scratch' in warned[0]
