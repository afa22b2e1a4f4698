"""Photos: every face found (BlazeFace, shipped in the package), framed as FER2013 frames its faces,
classified with test-time augmentation and a calibrated confidence; any image format; a bad file
is one line and the rest are still classified."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from skimage import data as skimage_data

from fer_jax import FerJaxError, evaluation, faces
from fer_jax.data import images as fer_images
from fer_jax.predictor import CROP_TTA, DETECTED_TTA, TTA_VARIANTS, Predictor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASTRONAUT_FACE = (176, 76, 99, 99)  # BlazeFace's box on scikit-image's astronaut (x, y, w, h)


@pytest.fixture(scope='module')
def predictor():
  return Predictor.pretrained()


def _near(box, expected, tolerance=8):
  return all(abs(a - b) <= tolerance for a, b in zip(box, expected))


def test_the_astronaut_is_found_and_happy(predictor):
  found = predictor.predict_faces(skimage_data.astronaut())
  assert len(found) == 1 and _near(found[0].box, ASTRONAUT_FACE)
  assert found[0].emotion == 'happy' and found[0].confidence > 0.6
  # A photo of a cup: no face, so no guess.
  assert predictor.predict_faces(skimage_data.coffee()) == []


def test_every_face_of_a_group_gets_its_own_box(predictor):
  astronaut = skimage_data.astronaut()
  group = np.full((512, 1200, 3), 90, np.uint8)
  group[:, :512] = astronaut
  group[:, 640:1152] = astronaut[:, ::-1]  # a mirrored second person
  found = predictor.predict_faces(group)
  assert len(found) == 2
  boxes = sorted(f.box for f in found)
  assert _near(boxes[0], ASTRONAUT_FACE)
  x, y, w, h = ASTRONAUT_FACE
  assert _near(boxes[1], (640 + 512 - x - w, y, w, h))
  assert found[0].probabilities == pytest.approx(found[1].probabilities, abs=0.05)


def test_exif_orientation_is_honoured(tmp_path, predictor):
  """A phone photo stored sideways with EXIF orientation 6 ('rotate 90 clockwise to view')."""
  sideways = Image.fromarray(skimage_data.astronaut()).transpose(Image.Transpose.ROTATE_90)
  exif = Image.Exif()
  exif[0x0112] = 6
  sideways.save(tmp_path / 'phone.jpg', exif=exif, quality=95)
  found = predictor.predict_faces(tmp_path / 'phone.jpg')
  assert len(found) == 1 and _near(found[0].box, ASTRONAUT_FACE, tolerance=10)
  assert found[0].emotion == 'happy'


def test_eyes_are_levelled_on_a_turned_face(predictor):
  upright = skimage_data.astronaut()
  turned = np.asarray(Image.fromarray(upright).rotate(30, Image.Resampling.BILINEAR,
                                                      fillcolor=(128, 128, 128)))
  (face,) = faces.detect_faces(turned)
  (right_eye_x, right_eye_y), (left_eye_x, left_eye_y) = face.eyes
  tilt = np.degrees(np.arctan2(left_eye_y - right_eye_y, left_eye_x - right_eye_x))
  assert -40 < tilt < -20  # turned 30 degrees counter-clockwise: the eye line slopes up
  grey = np.asarray(Image.fromarray(turned).convert('L'))
  levelled, kept = faces.crop_face(grey, face, align=True), faces.crop_face(grey, face, align=False)
  reference = faces.crop_face(np.asarray(Image.fromarray(upright).convert('L')),
                              faces.detect_faces(upright)[0], align=True)
  error = lambda crop: np.abs(crop.astype(float) - reference).mean()
  assert error(levelled) < 0.6 * error(kept)


@pytest.mark.parametrize('mode', ['CMYK', 'I;16', 'RGBA', 'P', 'LA'])
def test_any_image_mode_is_read(tmp_path, predictor, mode):
  rgb = Image.fromarray(skimage_data.astronaut())
  image = {'CMYK': lambda: rgb.convert('CMYK'),
           'I;16': lambda: Image.fromarray(np.asarray(rgb.convert('L')).astype(np.uint16) * 257),
           'RGBA': lambda: rgb.convert('RGBA'), 'P': lambda: rgb.convert('P'),
           'LA': lambda: rgb.convert('LA')}[mode]()
  path = tmp_path / f'astronaut.{"jpg" if mode == "CMYK" else "png"}'
  image.save(path)
  found = predictor.predict_faces(path)
  assert len(found) == 1 and _near(found[0].box, ASTRONAUT_FACE, tolerance=10)


def test_a_huge_photo_is_shrunk_on_loading_and_boxes_stay_in_its_pixels(tmp_path, predictor):
  huge = Image.fromarray(skimage_data.astronaut()).resize((8000, 8000), Image.Resampling.NEAREST)
  huge.save(tmp_path / 'huge.png')
  rgb, grey, scale = fer_images.load_image(tmp_path / 'huge.png')
  assert max(grey.shape) == fer_images.MAX_SIDE and rgb.shape[:2] == grey.shape
  assert scale == pytest.approx(8000 / fer_images.MAX_SIDE)
  found = predictor.predict_faces(tmp_path / 'huge.png')
  assert len(found) == 1
  assert _near(found[0].box, [v * 8000 / 512 for v in ASTRONAUT_FACE], tolerance=8 * 8000 / 512)


def test_an_animated_gif_gives_its_first_frame(tmp_path, predictor):
  frames = [Image.fromarray(skimage_data.astronaut()).convert('P'), Image.new('P', (512, 512))]
  frames[0].save(tmp_path / 'moving.gif', save_all=True, append_images=frames[1:], duration=100)
  assert len(predictor.predict_faces(tmp_path / 'moving.gif')) == 1


def test_tta_views_average_and_ten_crop_has_ten(predictor):
  rng = np.random.default_rng(0)
  face = rng.integers(0, 256, (3, 48, 48), dtype=np.uint8)
  temperature = predictor.temperature_for('flip')  # each variant has its own
  none = evaluation.calibrated(predictor.logits(face)[None], temperature)
  mirrored = evaluation.calibrated(predictor.logits(face[:, :, ::-1])[None], temperature)
  np.testing.assert_allclose(predictor.probabilities(face, 'flip'), (none + mirrored) / 2,
                             rtol=1e-5, atol=1e-6)
  assert len(TTA_VARIANTS['ten_crop'](face[..., None])) == 10
  with pytest.raises(FerJaxError, match=r"--tta='five' is unknown; use one of none, flip, ten_crop"):
    Predictor.pretrained(tta='five')


def test_faces_found_in_photos_get_the_detected_default_and_crops_the_crop_default(predictor):
  """Found faces are classified with DETECTED_TTA, crops given directly with CROP_TTA (the
  defaults differ), and an explicit tta applies to both."""
  assert predictor.tta is None and DETECTED_TTA != CROP_TTA
  astronaut = skimage_data.astronaut()
  crops, boxes = predictor.find_faces(astronaut)
  (found,) = predictor.predict_faces(astronaut)
  expected = predictor.probabilities(crops, DETECTED_TTA)[0]
  other = predictor.probabilities(crops, CROP_TTA)[0]
  assert np.abs(expected - other).max() > 1e-3  # the two defaults tell apart on this face
  np.testing.assert_allclose(list(found.probabilities.values()), expected, rtol=1e-5, atol=1e-6)
  (largest,) = predictor.predict([astronaut])
  assert largest.probabilities == found.probabilities
  # The same face given as a 48x48 crop: the crop default.
  (as_crop,) = predictor.predict_faces(crops[0])
  np.testing.assert_allclose(list(as_crop.probabilities.values()),
                             predictor.probabilities(crops, CROP_TTA)[0], rtol=1e-5, atol=1e-6)
  # One call with a photo and a crop: each by its own default.
  photo, crop = predictor.predict([astronaut, crops[0]])
  assert photo.probabilities == pytest.approx(found.probabilities, abs=1e-6)
  assert crop.probabilities == pytest.approx(as_crop.probabilities, abs=1e-6)
  (found_none,) = Predictor.pretrained(tta='none').predict_faces(astronaut)
  np.testing.assert_allclose(list(found_none.probabilities.values()),
                             predictor.probabilities(crops, 'none')[0], rtol=1e-5, atol=1e-6)


def test_temperature_scaling_recovers_a_known_temperature_and_lowers_the_ece():
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 3, (1, 20000, 7))
  true_temperature = 2.0
  probabilities = evaluation.calibrated(logits, true_temperature)
  labels = np.array([rng.choice(7, p=p) for p in probabilities])
  fitted = evaluation.fit_temperature(logits, labels)
  assert fitted == pytest.approx(true_temperature, rel=0.05)
  before, _ = evaluation.expected_calibration_error(evaluation.calibrated(logits, 1.0), labels)
  after, bins = evaluation.expected_calibration_error(evaluation.calibrated(logits, fitted), labels)
  assert after < 0.02 < before
  assert sum(b['count'] for b in bins) == 20000


def test_each_tta_variant_uses_its_own_fitted_temperature(predictor):
  """The shipped card holds a temperature per TTA variant; probabilities of a variant are the
  mean of softmax(logits / its temperature) over its views, whichever runtime gives the logits."""
  assert set(predictor.temperatures) == set(TTA_VARIANTS)
  assert predictor.temperature == predictor.temperatures['ten_crop']
  crops, _ = predictor.find_faces(skimage_data.astronaut())
  for tta in TTA_VARIANTS:
    views = TTA_VARIANTS[tta](crops[..., None])
    logits = predictor.logits(np.concatenate(views)).reshape(len(views), len(crops), -1)
    expected = evaluation.calibrated(logits, predictor.temperatures[tta])
    np.testing.assert_allclose(predictor.probabilities(crops, tta), expected, rtol=1e-6)
  plain = Predictor(predictor.model_config.to_dict(), predictor.variables, temperature=2.0)
  assert plain.temperature_for('flip') == 2.0  # no per-variant temperatures: the one for all


def test_expected_calibration_error_by_hand():
  probabilities = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
  labels = np.array([0, 1, 0, 0])
  # Bin 0.9: accuracy 0.5 at confidence 0.9; bin 0.6: accuracy 1.0 at 0.6 -> ECE 0.5 * 0.4 + 0.5 * 0.4.
  ece, bins = evaluation.expected_calibration_error(probabilities, labels)
  assert ece == pytest.approx(0.4) and [b['count'] for b in bins] == [2, 2]


def test_predict_cli_one_row_per_face_and_a_line_for_each_bad_file(tmp_path, predictor):
  Image.fromarray(skimage_data.astronaut()).save(tmp_path / 'astronaut.png')
  Image.fromarray(skimage_data.coffee()).save(tmp_path / 'coffee.png')
  (tmp_path / 'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 not really a jpeg')
  files = [str(tmp_path / n) for n in ('astronaut.png', 'coffee.png', 'broken.jpg')]
  out = subprocess.run([sys.executable, '-m', 'fer_jax.predict', '--pretrained', '--json'] + files,
                       capture_output=True, text=True, cwd=REPO)
  assert out.returncode == 1 and 'Traceback' not in out.stderr
  rows = [json.loads(line) for line in out.stdout.splitlines()]
  assert len(rows) == 1 and rows[0]['file'] == files[0] and rows[0]['face'] == 0
  assert _near(rows[0]['box'], ASTRONAUT_FACE) and rows[0]['emotion'] == 'happy'
  # The command line's default for a face found in a photo is the library's.
  crops, _ = predictor.find_faces(tmp_path / 'astronaut.png')
  np.testing.assert_allclose(list(rows[0]['probabilities'].values()),
                             predictor.probabilities(crops, DETECTED_TTA)[0], atol=2e-6)
  errors = [line for line in out.stderr.splitlines() if line.startswith('error: ')]
  assert errors == [f'error: {files[1]}: no face found (blazeface); if the image is a face crop '
                    'already, pass --no_detect.',
                    f'error: {files[2]} is truncated or damaged (Truncated File Read); pass a PNG, '
                    'JPEG or other image file.']


def test_a_small_tight_crop_the_detector_misses_is_taken_whole(predictor):
  x, y, w, h = ASTRONAUT_FACE
  tight = np.asarray(Image.fromarray(skimage_data.astronaut()[y + 10:y + h - 5, x + 8:x + w - 8])
                     .resize((100, 100), Image.Resampling.BILINEAR))
  found = predictor.predict_faces(tight)
  assert len(found) == 1 and found[0].emotion == 'happy'
  assert predictor.predict_faces(np.full((200, 200), 128, np.uint8)) == []  # a photo: no guess


def test_an_image_folder_of_photos_is_scored_on_the_faces_in_them(tmp_path, predictor):
  (tmp_path / 'test' / 'happy').mkdir(parents=True)
  Image.fromarray(skimage_data.astronaut()).save(tmp_path / 'test' / 'happy' / 'astronaut.png')
  Image.fromarray(skimage_data.coffee()).save(tmp_path / 'test' / 'happy' / 'cup.png')
  faces_found, labels = evaluation.load_eval_data(str(tmp_path), 'test')
  assert faces_found.shape == (2, 48, 48, 1) and labels.tolist() == [3, 3]
  crops, boxes = predictor.find_faces(skimage_data.astronaut())
  np.testing.assert_array_equal(faces_found[0, ..., 0], crops[0])
  # No face in the cup photo: a labelled image is still scored, as a whole.
  np.testing.assert_array_equal(faces_found[1, ..., 0], fer_images.load_face(skimage_data.coffee()))
