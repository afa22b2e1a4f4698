"""The page in a real browser: headless Chromium from the system packages (Debian's `chromium` and
`chromium-driver`), driven by Selenium through the system chromedriver, against a real server.
Skipped when Chromium is missing, except in CI (env CI set), where that is a failure: .ci/run
installs it.
"""
import os
import shutil
import time

import numpy as np
import pytest
from PIL import Image
from skimage import data as skimage_data

httpx = pytest.importorskip('httpx', reason='the serve tests need fer_jax[test] (httpx)')
pytest.importorskip('fastapi', reason='the serve tests need fer_jax[serve] (fastapi, uvicorn)')

from fer_jax import EMOTIONS  # noqa: E402
from fer_jax.serve import load  # noqa: E402

CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser') or '/usr/bin/chromium'
CHROMEDRIVER = shutil.which('chromedriver') or '/usr/bin/chromedriver'
HAPPY_RGB = (0x2c, 0xa0, 0x2c)  # the page's colour for happy (static/app.js)


def browser_missing() -> str:
  missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]
  try:
    import selenium  # noqa: F401
  except ImportError:
    missing.append('selenium (pip install "fer_jax[test]")')
  return ', '.join(missing)


@pytest.fixture(scope='module')
def server():
  with load.running_server(['--pretrained', '--max_batch_faces=6']) as (url, _):
    yield url


def write_y4m(path, frames: int = 12, width: int = 320, height: int = 240) -> None:
  """A short clip of the astronaut's head moving across a grey frame, as YUV4MPEG2 (4:2:0), the
  format Chromium's fake camera reads."""
  head = Image.fromarray(skimage_data.astronaut()[10:250, 110:350]).resize((200, 200))
  with open(path, 'wb') as f:
    f.write(f'YUV4MPEG2 W{width} H{height} F10:1 Ip A1:1 C420jpeg\n'.encode())
    for index in range(frames):
      frame = Image.new('RGB', (width, height), (128, 128, 128))
      frame.paste(head, (20 + 8 * index, 20))
      y, u, v = frame.convert('YCbCr').split()
      f.write(b'FRAME\n' + y.tobytes() + u.resize((width // 2, height // 2)).tobytes()
              + v.resize((width // 2, height // 2)).tobytes())


@pytest.fixture(scope='module')
def browser(tmp_path_factory):
  missing = browser_missing()
  if missing:
    if os.environ.get('CI'):
      pytest.fail(f'the browser tests must run in CI, but {missing} is missing: .ci/run installs '
                  'chromium and chromium-driver with apt-get.')
    pytest.skip(f'{missing} not installed (apt-get install chromium chromium-driver)')
  os.environ['SE_OFFLINE'] = '1'  # Selenium Manager never downloads a driver or a browser
  from selenium import webdriver
  from selenium.webdriver.chrome.service import Service
  clip = tmp_path_factory.mktemp('camera') / 'clip.y4m'
  write_y4m(clip)
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for argument in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu',
                   '--window-size=1200,900', '--use-fake-ui-for-media-stream',
                   '--use-fake-device-for-media-stream',
                   f'--use-file-for-fake-video-capture={clip}'):
    options.add_argument(argument)
  driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
  driver.set_script_timeout(60)
  yield driver
  driver.quit()


def wait_for(condition, timeout: float = 90.0, what: str = ''):
  """condition()'s first truthy value within `timeout` seconds."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    value = condition()
    if value:
      return value
    time.sleep(0.2)
  raise AssertionError(f'timed out after {timeout:.0f} s waiting for {what}')


def open_page(driver, url):
  from selenium.webdriver.common.by import By
  driver.get(url + '/')
  wait_for(lambda: 'cnn48' in driver.find_element(By.ID, 'model').text, what='the model card')


def text(driver, selector: str) -> str:
  from selenium.webdriver.common.by import By
  found = driver.find_elements(By.CSS_SELECTOR, selector)
  return found[0].text if found and found[0].is_displayed() else ''


def pixel(driver, canvas_id: str, x: int, y: int) -> tuple[int, int, int]:
  return tuple(driver.execute_script(
      'return Array.from(document.getElementById(arguments[0]).getContext("2d")'
      '.getImageData(arguments[1], arguments[2], 1, 1).data.slice(0, 3));', canvas_id, x, y))


def test_a_photo_shows_its_face_box_happy_and_the_bars(browser, server, tmp_path):
  from selenium.webdriver.common.by import By
  photo = tmp_path / 'astronaut.png'
  Image.fromarray(skimage_data.astronaut()).save(photo)
  open_page(browser, server)
  browser.find_element(By.ID, 'file').send_keys(str(photo))
  emotion = wait_for(lambda: text(browser, '.face .emotion'), what='a face on the page')
  assert emotion == 'happy'
  assert text(browser, '.face .box').startswith('box x ')
  x, y, w, h = httpx.post(f'{server}/v1/predict', files={'file': photo.read_bytes()},
                          timeout=120).json()['faces'][0]['box']
  # The box is drawn on the photo in happy's colour: its left edge, half-way down.
  drawn = wait_for(lambda: pixel(browser, 'photo', x, y + h // 2) != (221, 221, 221) and
                   pixel(browser, 'photo', x, y + h // 2), what='the photo drawn')
  assert np.abs(np.subtract(drawn, HAPPY_RGB)).max() < 40, drawn
  bars = browser.find_elements(By.CSS_SELECTOR, '.face .bar')
  assert [bar.get_attribute('data-label') for bar in bars] == list(EMOTIONS)
  happy = float(browser.find_element(By.CSS_SELECTOR, '.bar[data-label=happy] .value').text)
  assert happy > 0.5
  assert browser.save_screenshot(str(tmp_path / 'serve_page.png'))
  assert Image.open(tmp_path / 'serve_page.png').size[0] > 800


def test_a_bad_file_shows_the_servers_sentence(browser, server, tmp_path):
  from selenium.webdriver.common.by import By
  notes = tmp_path / 'notes.png'
  notes.write_text('a shopping list, not a photo')
  expected = httpx.post(f'{server}/v1/predict', files={'file': ('notes.png', notes.read_bytes())}
                        ).json()['error']
  open_page(browser, server)
  browser.find_element(By.ID, 'file').send_keys(str(notes))
  shown = wait_for(lambda: text(browser, '#error'), what='the error sentence')
  assert shown == expected and shown.startswith('notes.png: ')
  assert not browser.find_element(By.ID, 'photo-view').is_displayed()


def test_the_camera_draws_labels_live_and_counts_frames(browser, server, tmp_path):
  from selenium.webdriver.common.by import By
  open_page(browser, server)
  browser.find_element(By.ID, 'camera').click()
  # The first frames may come before the camera's picture does ("no face in view").
  wait_for(lambda: text(browser, '#camera-faces').split(' ')[0] in EMOTIONS,
           what='an emotion label for the face in the clip')
  first = int(browser.find_element(By.ID, 'frames').text)
  wait_for(lambda: int(browser.find_element(By.ID, 'frames').text) >= first + 2,
           what='more frames analysed')
  assert float(browser.find_element(By.ID, 'fps').text) > 0
  drawn = browser.execute_script(
      'const c = document.getElementById("overlay");'
      'const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;'
      'let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n;')
  assert drawn > 100  # the box and its label, over the video
  assert browser.save_screenshot(str(tmp_path / 'serve_camera.png'))
  browser.find_element(By.ID, 'camera').click()
  assert not browser.find_element(By.ID, 'camera-view').is_displayed()


def test_the_map_toggle_draws_each_faces_map_over_the_photo(browser, server, tmp_path):
  from selenium.webdriver.common.by import By
  photo = tmp_path / 'astronaut.png'
  Image.fromarray(skimage_data.astronaut()).save(photo)
  x, y, w, h = httpx.post(f'{server}/v1/predict', files={'file': photo.read_bytes()},
                          timeout=120).json()['faces'][0]['box']
  open_page(browser, server)
  maps = lambda: browser.find_element(By.ID, 'photo').get_attribute('data-maps')  # noqa: E731
  browser.find_element(By.ID, 'why').click()
  browser.find_element(By.ID, 'file').send_keys(str(photo))
  wait_for(lambda: maps() == '1', what='the map drawn over the face')
  with_map = pixel(browser, 'photo', x + w // 2, y + h // 2)
  browser.find_element(By.ID, 'why').click()  # off: the same photo is asked again, without maps
  wait_for(lambda: maps() == '0', what='the photo drawn again without its map')
  without = pixel(browser, 'photo', x + w // 2, y + h // 2)
  assert np.abs(np.subtract(with_map, without)).max() > 20, (with_map, without)
