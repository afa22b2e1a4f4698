import io
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from conftest import generated_smoke_config, write_csv
import ml_collections

from fer_jax import EMOTIONS, FerJaxError, augment, evaluation, models, predict, train
from fer_jax import predictor as predictor_module
from fer_jax.checkpoint import load_for_inference
from fer_jax.data import images as fer_images
from fer_jax.data.csv import read_fer2013_csv

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def trained_workdir(tmp_path_factory):
  """One short training run on generated faces, shared by the tests below."""
  config = generated_smoke_config(256, 64)
  config.num_epochs = 1
  workdir = str(tmp_path_factory.mktemp('trained'))
  train.train_and_evaluate(config, workdir)
  return workdir


@pytest.fixture(scope='module')
def predictor(trained_workdir):
  return predict.Predictor.from_workdir(trained_workdir)


@pytest.fixture(scope='module')
def real_faces(real_csv):
  """The first 300 PublicTest faces of the real CSV."""
  faces, labels = read_fer2013_csv(real_csv)['PublicTest']
  return faces[:300], labels[:300]


def test_training_writes_learning_curves(trained_workdir):
  with Image.open(os.path.join(trained_workdir, 'learning_curves.png')) as image:
    assert image.size[0] > 500 and image.size[1] > 300


def test_evaluation_on_private_only_csv_matches_a_hand_count(tmp_path, trained_workdir, predictor,
                                                            real_faces):
  faces, labels = real_faces
  csv_path = write_csv(tmp_path / 'private.csv.gz',
                       [(int(l), f, 'PrivateTest') for f, l in zip(faces, labels)])
  loaded_faces, loaded_labels = evaluation.load_eval_data(str(csv_path), 'test')
  report = evaluation.evaluate(predictor, loaded_faces, loaded_labels, ['none'])['none']
  # Hand count: the checkpoint's variables through model.apply, one batch, no Predictor.
  variables, meta = load_for_inference(trained_workdir)
  model = models.create_model(ml_collections.ConfigDict(meta['model_config']))
  logits = model.apply(variables, augment.normalize(jax.numpy.asarray(faces)), train=False)
  hand_count = int(np.sum(np.argmax(np.asarray(logits), -1) == labels))
  assert report['correct'] == hand_count and report['count'] == 300
  assert report['accuracy'] == pytest.approx(hand_count / 300)
  matrix = np.array(report['confusion_matrix'])
  np.testing.assert_array_equal(matrix.sum(1), np.bincount(labels, minlength=7))
  assert np.trace(matrix) == hand_count


def test_evaluate_cli_writes_reports_and_names_missing_splits(tmp_path, trained_workdir, real_faces):
  faces, labels = real_faces
  csv_path = write_csv(tmp_path / 'private.csv', [(int(l), f, 'PrivateTest')
                                                  for f, l in zip(faces[:64], labels[:64])])
  cmd = [sys.executable, '-m', 'fer_jax.evaluate', '--workdir', trained_workdir, '--data',
         str(csv_path), '--tta=none,flip,ten_crop']
  out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)  # the file's only split
  assert out.returncode == 0, out.stderr[-2000:]
  assert 'scoring test of' in out.stderr
  # Not a terminal: the progress bar is a log line every ~10 %, up to all 64 x 13 views.
  assert 'views scored (64 faces x 13) 832/832' in out.stderr and '\x1b[A' not in out.stderr
  report = json.load(open(os.path.join(trained_workdir, 'eval_test.json')))
  assert set(report['reports']) == {'none', 'flip', 'ten_crop'}
  assert report['reports']['none']['count'] == 64 and 'macro_f1' in report['reports']['flip']
  assert 'accuracy' in out.stdout and 'confusion matrix' in out.stdout
  assert os.path.getsize(os.path.join(trained_workdir, 'confusion_test.png')) > 1000
  out = subprocess.run(cmd + ['--split', 'validation'], capture_output=True, text=True, cwd=REPO)
  assert out.returncode == 1 and 'Traceback' not in out.stderr
  assert "has no PublicTest rows, so there is no 'validation' split; it holds test (PrivateTest)" in out.stderr


def test_image_folder_dataset(tmp_path, predictor):
  for i, emotion in enumerate(('happy', 'sad', 'happy')):
    folder = tmp_path / 'test' / emotion
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((48, 48), 40 * i, np.uint8)).save(folder / f'{i}.png')
  faces, labels = evaluation.load_eval_data(str(tmp_path), 'test')
  assert faces.shape == (3, 48, 48, 1)
  assert sorted(labels.tolist()) == sorted([EMOTIONS.index('happy')] * 2 + [EMOTIONS.index('sad')])
  (tmp_path / 'test' / 'smiling').mkdir()
  with pytest.raises(FerJaxError, match=r"test/smiling is empty; add images of 'smiling'"):
    evaluation.load_eval_data(str(tmp_path), 'test')
  Image.fromarray(np.full((48, 48), 9, np.uint8)).save(tmp_path / 'test' / 'smiling' / 'x.png')
  # A class the 7-class model does not know is named, with the model's classes.
  with pytest.raises(FerJaxError, match=r"has class 'smiling', which the model does not know \(its "
                                        r'classes: angry, disgust'):
    evaluation.load_eval_data(str(tmp_path), 'test')
  with pytest.raises(FerJaxError, match=r"validation does not exist.*found splits: \['test'\]"):
    evaluation.load_eval_data(str(tmp_path), 'validation')


def _face(real_faces) -> np.ndarray:
  return real_faces[0][0, ..., 0]


def test_same_face_in_any_format_gives_the_same_prediction(tmp_path, predictor, real_faces):
  face = _face(real_faces)
  Image.fromarray(face).save(tmp_path / 'grey.png')
  Image.fromarray(np.stack([face] * 3, -1)).save(tmp_path / 'rgb.jpg', quality=95)
  big = np.kron(face, np.ones((2, 2), np.uint8))
  Image.fromarray(np.dstack([big, big, big, np.full_like(big, 255)]), 'RGBA').save(tmp_path / 'big.png')
  # big.png (96 px) would be searched for a face: detect=False takes it as the crop it is.
  grey, rgb_jpeg, rgba = (predictor.predict([tmp_path / n], detect=False)[0]
                          for n in ('grey.png', 'rgb.jpg', 'big.png'))
  assert grey.probabilities == rgba.probabilities  # lossless and exactly downsampled: identical
  jpeg_error = np.abs(np.array(list(grey.probabilities.values()))
                      - np.array(list(rgb_jpeg.probabilities.values()))).max()
  assert jpeg_error < 0.02, jpeg_error  # JPEG q95 moves pixels by a few levels
  # A PIL image and an array of the same face agree with the file.
  assert predictor.predict([Image.fromarray(face)])[0].probabilities == grey.probabilities
  assert predictor.predict([face])[0].probabilities == grey.probabilities


def test_image_modes_convert_to_grey(tmp_path):
  face = np.arange(48 * 48, dtype=np.uint16).reshape(48, 48) % 256
  Image.fromarray((face.astype(np.uint16) * 257)).save(tmp_path / 'deep.png')  # 16-bit grey
  np.testing.assert_array_equal(fer_images.load_face(tmp_path / 'deep.png'), face.astype(np.uint8))
  palette = Image.fromarray(face.astype(np.uint8)).convert('P')
  palette.save(tmp_path / 'palette.png')
  assert np.abs(fer_images.load_face(tmp_path / 'palette.png').astype(int) - face).max() <= 8
  transparent = np.zeros((48, 48, 4), np.uint8)
  Image.fromarray(transparent, 'RGBA').save(tmp_path / 'clear.png')
  assert (fer_images.load_face(tmp_path / 'clear.png') == 255).all()  # alpha over white
  Image.fromarray(np.full((480, 640), 77, np.uint8)).save(tmp_path / 'large.png')
  large = fer_images.load_face(tmp_path / 'large.png')
  assert large.shape == (48, 48) and (large == 77).all()


def test_load_and_predict_matches_the_reference_api(trained_workdir, real_faces):
  emotion, confidence, probabilities = predict.load_and_predict(trained_workdir, _face(real_faces))
  assert emotion in EMOTIONS and list(probabilities) == list(EMOTIONS)
  assert confidence == max(probabilities.values()) == probabilities[emotion]
  assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)


def test_predict_cli_reports_each_bad_file_and_classifies_the_rest(tmp_path, trained_workdir,
                                                                   real_faces):
  good = tmp_path / 'good.png'
  Image.fromarray(_face(real_faces)).save(good)
  (tmp_path / 'empty.png').write_bytes(b'')
  (tmp_path / 'text.jpg').write_text('not an image')
  buffer = io.BytesIO()
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200), dtype=np.uint8)).save(buffer, 'PNG')
  (tmp_path / 'cut.png').write_bytes(buffer.getvalue()[:len(buffer.getvalue()) // 2])
  files = [str(good), str(tmp_path / 'missing.png'), str(tmp_path / 'empty.png'),
           str(tmp_path / 'text.jpg'), str(tmp_path / 'cut.png')]
  out = subprocess.run([sys.executable, '-m', 'fer_jax.predict', '--workdir', trained_workdir,
                        '--json'] + files, capture_output=True, text=True, cwd=REPO)
  assert out.returncode == 1, out.stderr[-2000:]
  lines = [json.loads(l) for l in out.stdout.strip().splitlines()]
  assert [l['file'] for l in lines] == files[:1]  # stdout holds the results, stderr the errors
  assert lines[0]['emotion'] in EMOTIONS and len(lines[0]['probabilities']) == 7
  error_lines = [l for l in out.stderr.splitlines() if l.startswith('error: ')]
  assert [l[len('error: '):].split(' ')[0] for l in error_lines] == files[1:]
  errors = {os.path.basename(l[len('error: '):].split(' ')[0]): l for l in error_lines}
  assert 'does not exist' in errors['missing.png']
  assert 'is empty (0 bytes)' in errors['empty.png']
  assert 'not an image PIL can read' in errors['text.jpg']
  assert 'truncated' in errors['cut.png']
  assert 'Traceback' not in out.stderr


def test_a_photo_without_a_face_is_an_error_not_a_guess(tmp_path, predictor):
  Image.fromarray(np.full((240, 240), 128, np.uint8)).save(tmp_path / 'wall.png')  # > 160 px: a photo
  assert predictor.predict_faces(tmp_path / 'wall.png') == []
  with pytest.raises(FerJaxError, match=r'no face found in .*wall.png \(blazeface\); if it is a face '
                                        r'crop already, pass detect=False \(--no_detect\)'):
    predictor.predict([tmp_path / 'wall.png'])


def test_missing_checkpoint_is_a_clear_error(tmp_path):
  with pytest.raises(FerJaxError, match=r'has no checkpoints .*train first with python -m fer_jax.main'):
    predict.Predictor.from_workdir(str(tmp_path))


def test_tta_views():
  faces = np.full((2, 48, 48, 1), 90, np.uint8)
  views = predictor_module.ten_crops(faces)
  assert len(views) == 10 and all(v.shape == faces.shape for v in views)
  assert all((v == 90).all() for v in views)  # a flat face stays flat under crop + resize
  ramp = np.tile(np.arange(48, dtype=np.uint8)[None, None, :, None], (1, 48, 1, 1))
  flipped = predictor_module.TTA_VARIANTS['flip'](ramp)
  np.testing.assert_array_equal(flipped[1][0, 0, :, 0], np.arange(48)[::-1])


def test_evaluate_calibrate_stores_the_temperature_the_predictor_then_uses(tmp_path, trained_workdir,
                                                                           real_faces):
  faces, labels = real_faces
  csv_path = write_csv(tmp_path / 'public.csv', [(int(l), f, 'PublicTest')
                                                 for f, l in zip(faces[:128], labels[:128])])
  cmd = [sys.executable, '-m', 'fer_jax.evaluate', '--workdir', trained_workdir, '--data',
         str(csv_path), '--tta=none,flip', '--calibrate']
  out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
  assert out.returncode == 0, out.stderr[-2000:]
  stored = json.load(open(os.path.join(trained_workdir, 'calibration.json')))['best']
  reports = json.load(open(os.path.join(trained_workdir, 'eval_validation.json')))['reports']
  assert reports['none']['temperature'] == stored['temperature'] != 1.0
  assert stored['temperatures'] == {v: reports[v]['temperature'] for v in ('none', 'flip')}
  assert reports['none']['ece_calibrated'] <= reports['none']['ece'] + 0.02
  assert os.path.getsize(os.path.join(trained_workdir, 'reliability_validation.png')) > 1000
  served = predict.Predictor.from_workdir(trained_workdir)
  assert served.temperature == stored['temperature']
  assert served.temperature_for('flip') == stored['temperatures']['flip']
  out = subprocess.run(cmd + ['--split', 'train'], capture_output=True, text=True, cwd=REPO)
  assert out.returncode == 1
  assert out.stderr.strip().splitlines()[-1] == ('error: --calibrate fits on validation (PublicTest) '
                                                 'faces, not train; pass --split validation.')


def test_several_datasets_give_one_table(tmp_path, trained_workdir, real_faces):
  faces, labels = real_faces
  public = write_csv(tmp_path / 'public.csv', [(int(l), f, 'PublicTest')
                                               for f, l in zip(faces[:40], labels[:40])])
  for i, face in enumerate(faces[:6]):
    folder = tmp_path / 'folder' / 'test' / ('happy' if i % 2 else 'sad')
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(face[..., 0]).save(folder / f'{i}.png')
  out = subprocess.run([sys.executable, '-m', 'fer_jax.evaluate', '--workdir', trained_workdir,
                        '--data', str(public), '--data', str(tmp_path / 'folder'),
                        '--tta=none,flip'], capture_output=True, text=True, cwd=REPO)
  assert out.returncode == 0, out.stderr[-2000:]
  rows = json.load(open(os.path.join(trained_workdir, 'eval_table.json')))
  assert [(r['split'], r['faces']) for r in rows] == [('validation', 40), ('test', 6)]
  assert {'accuracy (none)', 'macro_f1 (flip)', 'mean_recall (none)'} <= set(rows[0])
  single = evaluation.evaluate(predict.Predictor.from_workdir(trained_workdir),
                               *evaluation.load_eval_data(str(public), 'validation'), ['none'])
  assert rows[0]['accuracy (none)'] == single['none']['accuracy']
  assert '| data | split | faces |' in out.stdout


def test_the_loop_and_the_evaluate_command_give_the_same_numbers(trained_workdir):
  """The training loop scored its best epoch with the same report the command uses."""
  from fer_jax import data
  history = [json.loads(line) for line in open(os.path.join(trained_workdir, 'metrics.jsonl'))]
  config = generated_smoke_config(256, 64)
  split = data.load_split(config.data, 'validation')
  report = evaluation.evaluate(predict.Predictor.from_workdir(trained_workdir), split.images,
                               split.labels, ['none'])['none']
  best = max(history, key=lambda r: r['eval_accuracy'])
  assert report['accuracy'] == best['eval_accuracy']
  assert report['macro_f1'] == pytest.approx(best['eval_macro_f1'], abs=1e-9)
  assert report['loss'] == pytest.approx(best['eval_loss'], rel=1e-4)
