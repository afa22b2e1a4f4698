"""Inputs people have: sample depths other than 8 bits, boxes at the image's edges, very large
photos, folders with litter in them, iPhone photos, output paths that do not exist yet, annotated
photos, and Ctrl-C / SIGTERM during training. Each answered right, or in one sentence with the
exit status of fer_jax.cli."""
import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
from PIL import Image
from skimage import data as skimage_data

from fer_jax import FerJaxError, faces
from fer_jax.data import images as fer_images
from fer_jax.predictor import Predictor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def predictor():
  return Predictor.pretrained(tta='none')


@pytest.fixture(scope='module')
def face48(predictor) -> np.ndarray:
  """The astronaut's face as a uint8 48x48 crop (happy, confidently)."""
  crops, _ = predictor.find_faces(skimage_data.astronaut())
  return crops[0]


def _predict(tmp_path, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', 'fer_jax.predict', '--pretrained', '--tta', 'none',
                         *args], capture_output=True, text=True, cwd=REPO)


def test_samples_of_any_depth_are_mapped_to_8_bits_by_one_rule(tmp_path, predictor, face48):
  reference = predictor.predict_faces(face48, detect=False)[0]
  assert reference.emotion == 'happy' and reference.confidence > 0.8
  unit = face48.astype(np.float32) / 255
  files = {
      'float32 in [0, 1].tif': Image.fromarray(unit, mode='F'),
      'float32 in [0, 255].tif': Image.fromarray(face48.astype(np.float32) * 0.8 + 20, mode='F'),
      '16-bit full range.png': Image.fromarray(face48.astype(np.uint16) * 257),
      '12-bit in 16 bits.png': Image.fromarray(np.round(unit * 4095).astype(np.uint16)),
      '32-bit integer.tif': Image.fromarray(face48.astype(np.int32) * 65793),
  }
  for name, image in files.items():
    image.save(tmp_path / name)
  # Full-range 32-bit samples, unsigned (which Pillow holds in a signed mode) and signed.
  tifffile = pytest.importorskip('tifffile')
  tifffile.imwrite(tmp_path / 'uint32.tif', face48.astype(np.uint32) * 16843009)
  tifffile.imwrite(tmp_path / 'int32.tif', (face48.astype(np.int64) * (2**31 - 1) // 255
                                           ).astype(np.int32))
  for name in [*files, 'uint32.tif', 'int32.tif']:
    found = predictor.predict_faces(tmp_path / name, detect=False)[0]
    assert found.emotion == 'happy', name
    assert found.probabilities == pytest.approx(reference.probabilities, abs=0.03), name
  arrays = {'float [0, 1]': unit, 'uint16': face48.astype(np.uint16) * 257,
            'int32 full range': (face48.astype(np.int64) * (2**31 - 1) // 255).astype(np.int32),
            'int64 0-255': face48.astype(np.int64), 'float64 [0, 255]': face48.astype(np.float64)}
  for name, array in arrays.items():
    found = predictor.predict_faces(array, detect=False)[0]
    assert found.probabilities == pytest.approx(reference.probabilities, abs=0.03), name
    np.testing.assert_allclose(predictor.probabilities(array[None]), predictor.probabilities(
        face48[None]), atol=0.03, err_msg=name)
  assert fer_images.samples_to_uint8(np.array([[0.0, 0.5, 1.0]])).tolist() == [[0, 128, 255]]
  assert fer_images.samples_to_uint8(np.array([[-1.0, 0.0, 3.0]])).tolist() == [[0, 64, 255]]
  assert fer_images.samples_to_uint8(np.array([[0, 4095]], np.uint16)).tolist() == [[0, 255]]
  assert fer_images.samples_to_uint8(np.array([[0, 2**31 - 1]], np.int32)).tolist() == [[0, 255]]
  with pytest.raises(FerJaxError, match='not finite'):
    fer_images.samples_to_uint8(np.array([[0.0, np.nan]]))


def test_boxes_lie_within_the_image(predictor):
  astronaut = skimage_data.astronaut()
  x, y, w, h = 176, 76, 99, 99
  tight = astronaut[y:y + h, x:x + w]  # the detector's box reaches past this crop on every side
  found = predictor.predict_faces(tight, detect=True)
  assert len(found) == 1 and found[0].box == (0, 0, 99, 99)
  near_top = astronaut[y + 16:]  # the face's top edge is above the image
  for found_face in predictor.predict_faces(near_top):
    bx, by, bw, bh = found_face.box
    assert bx >= 0 and by == 0 and bx + bw <= near_top.shape[1] and by + bh <= near_top.shape[0]
  assert faces.clipped_box((-10, -7, 125, 122), 99, 99) == (0, 0, 99, 99)
  assert faces.clipped_box((10, 20, 30, 40), 100, 100, scale=2.0) == (20, 40, 60, 80)


def test_a_face_flush_with_the_bottom_right_corner_is_found(predictor):
  face = skimage_data.astronaut()[60:190, 160:290]
  for height, width in ((500, 600), (500, 610), (500, 740)):
    canvas = np.full((height, width, 3), 128, np.uint8)
    canvas[-face.shape[0]:, -face.shape[1]:] = face
    found = predictor.predict_faces(canvas)
    assert len(found) == 1, (height, width)
    x, y, w, h = found[0].box
    assert w > 80 and x + w <= width and y + h <= height, (height, width, found[0].box)


def test_a_200_megapixel_jpeg_is_read_at_a_reduced_size_without_warnings(tmp_path):
  big = Image.new('L', (16320, 12240), 128)
  big.paste(Image.fromarray(skimage_data.astronaut()).convert('L').resize((4000, 4000)), (6000, 4000))
  big.save(tmp_path / 'phone.jpg', quality=80)
  del big
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    rgb, grey, scale = fer_images.load_image(tmp_path / 'phone.jpg')
  assert max(grey.shape) == fer_images.MAX_SIDE and rgb.shape[:2] == grey.shape
  assert scale == pytest.approx(16320 / fer_images.MAX_SIDE)
  assert Image.MAX_IMAGE_PIXELS is not None  # Pillow's own limit is left as it was


def test_an_image_past_the_decoding_bound_is_one_sentence(tmp_path, monkeypatch):
  Image.new('L', (3000, 2000)).save(tmp_path / 'wide.png')
  monkeypatch.setattr(fer_images, 'MAX_DECODED_PIXELS', 5_000_000)
  with pytest.raises(FerJaxError, match=r'wide.png is 3000x2000 pixels \(6 MP to decode\), more '
                                        r'than the 5 MP fer_jax decodes at once'):
    fer_images.load_image(tmp_path / 'wide.png')


def test_a_folder_with_litter_hidden_files_and_iphone_photos(tmp_path):
  pytest.importorskip('pillow_heif')
  import pillow_heif
  photos = tmp_path / 'photos'
  (photos / '.thumbnails').mkdir(parents=True)
  (photos / '__MACOSX').mkdir()
  astronaut = Image.fromarray(skimage_data.astronaut())
  astronaut.save(photos / 'astronaut.png')
  pillow_heif.register_heif_opener()
  astronaut.save(photos / 'IMG_0001.HEIC', quality=90)
  (photos / '._astronaut.png').write_bytes(b'\x00\x05\x16\x07 AppleDouble fork')
  (photos / '.DS_Store').write_bytes(b'\x00\x00\x00\x01Bud1')
  (photos / '.thumbnails' / 'broken.jpg').write_bytes(b'not a jpeg')
  (photos / '__MACOSX' / 'astronaut.png').write_bytes(b'junk')
  (photos / 'notes.txt').write_text('who is who')
  (photos / 'IMG_0002.CR2').write_bytes(b'raw')
  (tmp_path / 'empty').mkdir()
  (tmp_path / 'empty' / '._x.png').write_bytes(b'junk')
  out = _predict(tmp_path, '--json', str(photos))
  assert out.returncode == 0, out.stderr[-2000:]
  rows = [json.loads(line) for line in out.stdout.splitlines()]
  assert [(os.path.basename(r['file']), r['emotion']) for r in rows] == [
      ('IMG_0001.HEIC', 'happy'), ('astronaut.png', 'happy')]
  assert [line for line in out.stderr.splitlines() if line.startswith('skipped')] == [
      f'skipped {photos / "IMG_0002.CR2"}: .CR2 images are not read; export it as JPEG or PNG.',
      f'skipped {photos / "notes.txt"}: not an image (.txt).']
  # A folder with nothing to read is one line; other inputs are still classified.
  mixed = _predict(tmp_path, '--json', str(tmp_path / 'empty'), str(photos / 'astronaut.png'))
  assert mixed.returncode == 1 and len(mixed.stdout.splitlines()) == 1
  assert mixed.stderr.strip().splitlines()[-1].startswith(f'error: {tmp_path / "empty"} holds no')
  named_raw = _predict(tmp_path, str(photos / 'IMG_0002.CR2'))
  assert named_raw.returncode == 1 and named_raw.stderr.strip().splitlines() == [
      f'error: {photos / "IMG_0002.CR2"}: .CR2 images are not read; export it as JPEG or PNG.']
  empty = _predict(tmp_path, str(tmp_path / 'empty'))
  assert empty.returncode == 1 and empty.stdout == '' and 'Traceback' not in empty.stderr
  assert empty.stderr.strip().splitlines() == [
      f'error: {tmp_path / "empty"} holds no images or videos (hidden files are skipped; read are '
      f'{" ".join(fer_images.IMAGE_EXTENSIONS)} .mp4 .avi .mov .mkv .webm .m4v .mpg .mpeg); pass '
      'another folder.']


def test_output_paths_are_made_or_refused_before_any_work_and_photos_are_annotated(tmp_path):
  Image.fromarray(skimage_data.astronaut()).save(tmp_path / 'astronaut.png')
  Image.fromarray(skimage_data.astronaut()[:, ::-1]).save(tmp_path / 'mirrored.jpg')
  photo = str(tmp_path / 'astronaut.png')
  out = _predict(tmp_path, '--csv', str(tmp_path / 'new' / 'rows.csv'), '--annotate',
                 str(tmp_path / 'shown' / 'astronaut.png'), photo)
  assert out.returncode == 0, out.stderr[-2000:]
  assert (tmp_path / 'new' / 'rows.csv').read_text().count('\n') == 2
  shown = np.asarray(Image.open(tmp_path / 'shown' / 'astronaut.png'))
  original = skimage_data.astronaut()
  assert shown.shape == original.shape and not np.array_equal(shown, original)
  # Several inputs: a folder gets one file each; one file name is refused before any work.
  out = _predict(tmp_path, '--annotate', str(tmp_path / 'folder'), photo,
                 str(tmp_path / 'mirrored.jpg'))
  assert out.returncode == 0, out.stderr[-2000:]
  assert sorted(os.listdir(tmp_path / 'folder')) == ['astronaut_annotated.png',
                                                     'mirrored_annotated.png']
  refused = [_predict(tmp_path, '--annotate', str(tmp_path / 'one.png'), photo, photo),
             _predict(tmp_path, '--annotate', photo, photo),
             _predict(tmp_path, '--csv', str(tmp_path / 'astronaut.png' / 'rows.csv'), photo)]
  for result in refused:
    assert result.returncode == 1 and result.stdout == '' and 'Traceback' not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
  assert 'names one file, but 2 inputs were given' in refused[0].stderr
  assert 'is one of the inputs; name another file or folder, so the original is kept' in refused[1].stderr
  assert 'cannot write in' in refused[2].stderr
  assert np.array_equal(np.asarray(Image.open(photo)), original)


@pytest.mark.parametrize('args,status,message', [
    (['fer_jax.main'], 2, 'error: --config is required. --workdir is required; run with --help '
                          'for the flags.'),
    (['fer_jax.main', '--config', 'configs/nosuch.py', '--workdir', 'x'], 2,
     'error: --config=configs/nosuch.py does not exist; pass a config file such as '
     'configs/smoke.py.'),
    (['fer_jax.predict', '--pretrained'], 2, 'error: name at least one image or video file or '
                                             'folder, --sample or --camera; run with --help for '
                                             'the flags.'),
    (['fer_jax.evaluate', '--bogus'], 2, "error: Unknown command line flag 'bogus'; run with "
                                          '--help for the flags.'),
    (['fer_jax.export', '--pretrained', '--out', '/proc/fer.onnx'], 1, None),
    (['fer_jax.main', '--config', 'tests/configs_that_fail/no_get_config.py', '--workdir', 'x'], 2,
     'error: --config=tests/configs_that_fail/no_get_config.py defines no get_config(); define '
     'one that returns an ml_collections.ConfigDict (configs/enhanced.py shows how).'),
    (['fer_jax.main', '--config', 'configs/smoke.py', '--workdir', 'x', '--config.model='], 2,
     'error: --config.model is a group of fields, not a value; set its fields one by one, e.g. '
     '--config.model.<field>=<value>.'),
    (['fer_jax.main', '--config', 'configs/smoke.py', '--workdir', 'x',
      '--config.data.eval_split=bogus'], 1,
     "error: config.data.eval_split='bogus' is not a split; use one of train, validation, test."),
    (['fer_jax.main', '--config', 'configs/smoke.py', '--workdir', 'x',
      '--config.evals=a=configs,a=configs'], 1,
     "error: config.evals names 'a' twice; give each dataset its own name."),
    (['fer_jax.main', '--config', 'configs/smoke.py', '--workdir', 'x', '--config.plateau_factor=2'],
     1, 'error: config.plateau_factor=2.0 is out of range; set it in (0, 1), e.g. 0.5.'),
    (['fer_jax.main', '--config', 'configs/smoke.py', '--workdir', 'x', '--config.log_every_steps=0'],
     1, 'error: config.log_every_steps=0 must be at least 1.'),
    (['fer_jax.main', '--config', 'configs/smoke.py', '--workdir='], 2,
     'error: --workdir is empty; pass the folder of the run, e.g. --workdir runs/smoke; run with '
     '--help for the flags.'),
    (['fer_jax.main', '--config', 'tests/configs_that_fail/returns_none.py', '--workdir', 'x'], 2,
     'error: --config=tests/configs_that_fail/returns_none.py: its get_config() returned None, not '
     'an ml_collections.ConfigDict; return one (configs/enhanced.py shows how).'),
    (['fer_jax.main', '--config', 'tests/configs_that_fail/raises.py', '--workdir', 'x'], 2,
     'error: the --config file failed to load (ValueError: config.head_lr must be set); fix it or '
     'pass another config file.'),
    (['fer_jax.main', '--config', 'tests/configs_that_fail/few_fields.py', '--workdir', 'x'], 2,
     "error: the --config file has no field 'fast_cpu'; start from configs/enhanced.py, which "
     'defines every field.'),
    (['fer_jax.evaluate', '--pretrained', '--data', 'x.csv', '--workdir', 'README.md/eval'], 1,
     'error: --workdir=README.md/eval: cannot write in README.md/eval (part of that path is a file, '
     'not a folder); pass a path in a folder you can write to.'),
])
def test_one_exit_status_convention_for_every_command(args, status, message):
  out = subprocess.run([sys.executable, '-m', *args], capture_output=True, text=True, cwd=REPO)
  assert out.returncode == status and 'Traceback' not in out.stderr and 'FATAL' not in out.stderr
  lines = [line for line in out.stderr.strip().splitlines()  # absl's log lines aside
           if 'returned None, did you forget' not in line and 'before flag parsing' not in line
           and not re.match(r'[IW]\d{4} ', line)]
  assert len(lines) == 1 and lines[0].startswith('error: '), out.stderr
  if message:
    assert lines[0] == message


def _training(workdir) -> subprocess.Popen:
  return subprocess.Popen(
      [sys.executable, '-m', 'fer_jax.main', '--config', 'configs/smoke.py', '--workdir',
       str(workdir), '--config.data.source=generated', '--config.num_epochs=40',
       '--config.data.generated_train_size=64', '--config.data.generated_eval_size=32',
       '--config.augment.steps=flip', '--config.progress_bar=false'],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)


def _wait_for(condition, process, timeout: float = 600) -> None:
  deadline = time.monotonic() + timeout
  while not condition():
    assert process.poll() is None, process.communicate()[1][-3000:]
    assert time.monotonic() < deadline
    time.sleep(0.1)


def test_ctrl_c_and_sigterm_say_what_was_saved(tmp_path):
  # Ctrl-C before the first checkpoint: the new workdir holds nothing worth keeping, and says so.
  early = _training(tmp_path / 'early')
  _wait_for(lambda: os.path.exists(tmp_path / 'early' / '.lock'), early)
  early.send_signal(signal.SIGINT)
  _, stderr = early.communicate(timeout=120)
  assert early.returncode == 130 and 'Traceback' not in stderr
  assert stderr.strip().splitlines()[-1] == (
      'error: interrupted by SIGINT (Ctrl-C): nothing was saved before the first checkpoint, and '
      f'the new workdir {tmp_path / "early"} was removed; rerun the same command to start again.')
  assert not os.path.exists(tmp_path / 'early')
  # SIGTERM (a scheduler) after a checkpoint: kept, and the line says how to resume.
  late = _training(tmp_path / 'late')
  latest = tmp_path / 'late' / 'checkpoints' / 'latest'
  _wait_for(lambda: latest.is_dir() and any(p.isdigit() for p in os.listdir(latest)), late)
  late.send_signal(signal.SIGTERM)
  _, stderr = late.communicate(timeout=120)
  assert late.returncode == 143 and 'Traceback' not in stderr
  last = stderr.strip().splitlines()[-1]
  assert last.startswith('error: interrupted by SIGTERM: the latest checkpoint (step ')
  assert last.endswith(f') is in {tmp_path / "late"}; rerun the same command to resume from it.')
