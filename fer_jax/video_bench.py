"""Video speed: the tracked search beside a full search of every frame, in one run, on clips made
here (the astronaut's face, its mirror image and a darker copy moving across a textured frame).

    python -m fer_jax.bench --video --json_out=video_bench.json

Per clip (640x480 and 1920x1080, one and three faces): frames/s over the whole run and
milliseconds a frame in each stage of fer_jax.video.STAGES (decode runs on its own thread, so
the stages add up to more than the wall time), for `search='full'` (every frame searched as a
photo: the whole frame and 85-119 tiles) and `search='track'` (fer_jax.faces.VideoSearch), with
`--tta none` and `--tta flip`. Agreement: of the faces both searches report in a frame, the share
whose boxes overlap by IoU >= 0.9, and the share with the same emotion. Classifier: a call's
milliseconds in each runtime (JAX, onnxruntime) at a frame's few faces and at 64. Memory: the
process's RSS while a long synthetic stream is classified frame by frame in memory (no file).
Absolute figures move with the machine's load; compare the ratios from one run.
"""
import os
import tempfile
import time
from typing import Any

from absl import flags
import numpy as np

FLAGS = flags.FLAGS
CLIPS = (('640x480, 1 face', (480, 640), 1), ('640x480, 3 faces', (480, 640), 3),
         ('1920x1080, 1 face', (1080, 1920), 1), ('1920x1080, 3 faces', (1080, 1920), 3))


def define_flags() -> None:
  flags.DEFINE_integer('video_frames', 60, 'Frames in each benchmark clip (--video).')
  flags.DEFINE_integer('video_camera_frames', 150, 'Frames given to the camera path at 30 '
                       'frames/s (--video), per 640x480 clip and TTA; 0 = none.')
  flags.DEFINE_integer('video_memory_frames', 3000, 'Frames of the in-memory stream whose RSS '
                       '--video tracks (30 frames = 1 s of video); 0 = none.')


def _faces() -> list[np.ndarray]:
  """Three BGR faces: the astronaut, her mirror image, a darker copy."""
  import cv2
  from skimage import data
  face = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)[20:260, 110:350]
  return [face, face[:, ::-1].copy(), (face * 0.7).astype(np.uint8)]


def make_frame(index: int, shape: tuple[int, int], count: int, faces: list[np.ndarray]) -> np.ndarray:
  """Frame `index` (BGR) of a clip: `count` faces of 1/3, 1/4 and 1/5 of the frame's height
  bouncing across a fixed noise texture at 2-6 px a frame (of a 480-px-high frame)."""
  import cv2
  height, width = shape
  rng = np.random.default_rng(0)
  frame = cv2.resize(rng.integers(60, 140, (height // 16, width // 16, 3), dtype=np.uint8),
                     (width, height), interpolation=cv2.INTER_LINEAR)
  unit = height / 480
  for k in range(count):
    side = int(height / (3 + k))
    face = cv2.resize(faces[k], (side, side), interpolation=cv2.INTER_AREA)
    span_x, span_y = width - side, height - side
    x = int(abs((40 * k + unit * (2 + 2 * k) * index) % (2 * span_x) - span_x))
    y = int(abs((unit * 60 * k + unit * 2 * index) % (2 * span_y) - span_y)) if k else span_y // 3
    frame[y:y + side, x:x + side] = face
  return frame


def write_clip(path: str, shape: tuple[int, int], count: int, frames: int) -> str:
  import cv2
  faces = _faces()
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'mp4v'), 30, (shape[1], shape[0]))
  for i in range(frames):
    writer.write(make_frame(i, shape, count, faces))
  writer.release()
  return path


class SyntheticCapture:
  """A cv2.VideoCapture stand-in that makes `frames` frames in memory (nothing on disk); with
  `pace`, read() gives them at that many frames/s, as a camera does (all made before the first)."""

  def __init__(self, shape: tuple[int, int], count: int, frames: int, pace: float = 0.0):
    self.shape, self.count, self.frames, self.index = shape, count, frames, 0
    self.faces, self.pace, self.start = _faces(), pace, 0.0
    self.made = [make_frame(i, shape, count, self.faces) for i in range(frames)] if pace else None

  def read(self):
    if self.index >= self.frames:
      return False, None
    if self.pace:  # frame i is there at i / pace seconds after the first
      self.start = self.start or time.perf_counter()
      time.sleep(max(self.start + self.index / self.pace - time.perf_counter(), 0))
    self.index += 1
    if self.made is not None:
      return True, self.made[self.index - 1]
    return True, make_frame(self.index - 1, self.shape, self.count, self.faces)

  def grab(self) -> bool:
    return self.read()[0]

  def get(self, prop: int) -> float:
    import cv2
    return {cv2.CAP_PROP_FPS: 30.0, cv2.CAP_PROP_FRAME_COUNT: float(self.frames)}.get(prop, 0.0)

  def isOpened(self) -> bool:  # noqa: N802 (OpenCV's name)
    return True

  def release(self) -> None:
    pass


def _agreement(full: list[dict], track: list[dict]) -> dict[str, Any]:
  """Faces both searches report in a frame (paired by best IoU > 0.3), those whose boxes overlap
  by IoU >= 0.9 and of those the ones with the same emotion, the pairs' mean IoU, and the largest
  difference in any class's probability between paired faces."""
  from fer_jax.faces import _iou
  by_frame: dict[int, list[dict]] = {}
  for row in track:
    by_frame.setdefault(row['frame'], []).append(row)
  both = close = same = same_all = 0
  overlaps, gaps = [], []
  for row in full:
    xyxy = lambda b: np.array([b[0], b[1], b[0] + b[2], b[1] + b[3]], float)  # noqa: E731
    ious = [(_iou(xyxy(row['box']), xyxy(o['box'])), o) for o in by_frame.get(row['frame'], [])]
    if not ious:
      continue
    iou, other = max(ious, key=lambda t: t[0])
    if iou > 0.3:
      both += 1
      overlaps.append(iou)
      same_all += other['emotion'] == row['emotion']
      gaps.append(max(abs(row['probabilities'][k] - v) for k, v in other['probabilities'].items()))
      if iou >= 0.9:
        close += 1
        same += other['emotion'] == row['emotion']
  return {'faces_full': len(full), 'faces_track': len(track), 'faces_both': both,
          'iou_ge_0_9': close, 'same_emotion': same, 'same_emotion_all_pairs': same_all,
          'mean_iou': round(float(np.mean(overlaps)), 3) if overlaps else None,
          'max_probability_gap': round(float(max(gaps)), 4) if gaps else None,
          'tracks_full': len({r['track'] for r in full}),
          'tracks_track': len({r['track'] for r in track})}


def run_path(predictor: Any, source: Any, search: str, frames: int) -> dict[str, Any]:
  from fer_jax import video
  stages: dict[str, float] = {}
  start = time.perf_counter()
  rows = list(video.predict_video(predictor, source, smooth=0.5, progress=False, search=search,
                                  stages=stages))
  wall = time.perf_counter() - start
  return {'frames_per_s': round(frames / wall, 2), 'wall_s': round(wall, 2),
          'full_searches': stages.pop('full_searches', 0),
          'ms_per_frame': {k: round(1000 * v / frames, 2) for k, v in stages.items()},
          'rows': rows}


def runtime_ms(predictor: Any, sizes: tuple[int, ...] = (1, 3, 10, 64),
               repeats: int = 15) -> dict[str, dict[int, float]]:
  """Milliseconds a call of Predictor.logits on `size` faces takes in each of its runtimes
  (median of `repeats` calls, the runtimes alternating, after one warm-up call each)."""
  faces = np.random.default_rng(0).integers(0, 256, (max(sizes), 48, 48, 1), dtype=np.uint8)
  times: dict[str, dict[int, list[float]]] = {r: {n: [] for n in sizes} for r in predictor.runtimes}
  for size in sizes:
    for runtime in predictor.runtimes:
      predictor.logits(faces[:size], runtime)
    for _ in range(repeats):
      for runtime in predictor.runtimes:
        start = time.perf_counter()
        predictor.logits(faces[:size], runtime)
        times[runtime][size].append(time.perf_counter() - start)
  return {r: {n: round(1000 * float(np.median(t)), 2) for n, t in by_size.items()}
          for r, by_size in times.items()}


def camera_run(predictor: Any, shape: tuple[int, int], count: int, frames: int,
               pace: float = 30.0) -> dict[str, Any]:
  """The camera path (predict_video with live=True: the newest frame only, classified frame by
  frame) on `frames` in-memory frames given at `pace` frames/s: the share of them analysed (a
  frame not taken before the next arrives is skipped) and the analysed frames a second."""
  from fer_jax import video
  capture = SyntheticCapture(shape, count, frames, pace)
  start = time.perf_counter()
  analysed = {row['frame'] for row in video.predict_video(predictor, capture, progress=False,
                                                            live=True, show=False)}
  wall = time.perf_counter() - start
  return {'pace': pace, 'frames': frames, 'analysed': len(analysed),
          'analysed_per_s': round(len(analysed) / wall, 1)}


def rss_mb() -> float:
  """This process's resident memory now (Linux's /proc; the peak elsewhere), in MiB."""
  try:
    with open('/proc/self/statm') as f:
      return round(int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20, 1)
  except OSError:
    import resource
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10, 1)


def memory_run(predictor: Any, frames: int, shape: tuple[int, int] = (480, 640), count: int = 3,
               every: int = 1) -> dict[str, Any]:
  """RSS every 1/10 of a `frames`-frame in-memory stream (`count` faces, every `every`-th frame
  classified)."""
  from fer_jax import video
  samples, start = [], time.perf_counter()
  capture = SyntheticCapture(shape, count, frames)
  step = max(frames // 10, 1)
  for row in video.predict_video(predictor, capture, every=every, progress=False):
    if row['frame'] >= step * len(samples):
      samples.append((row['frame'], rss_mb()))
  return {'frames': frames, 'shape': shape, 'faces': count, 'every': every, 'video_s': frames / 30,
          'wall_s': round(time.perf_counter() - start, 1), 'rss_mb_by_frame': samples}


def main(json_out: str = '') -> dict[str, Any]:
  import json
  import jax
  from fer_jax.predictor import Predictor
  predictors = {tta: Predictor.pretrained(tta=tta) for tta in ('none', 'flip')}
  for predictor in predictors.values():  # compile every batch size, load every runtime, first
    for runtime in predictor.runtimes:
      for size in predictor.buckets[:-1]:
        predictor.logits(np.zeros((size, 48, 48), np.uint8), runtime)
  report: dict[str, Any] = {'jax': jax.__version__, 'cpus': os.cpu_count(),
                            'load_average_start': os.getloadavg(), 'clips': {}}
  lines = ['| clip | search | TTA | frames/s | vs full | decode | detect | crop | classify | '
           'track | write (ms a frame) | faces in both / IoU>=0.9 / same emotion | tracks |',
           '|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|']
  with tempfile.TemporaryDirectory() as folder:
    for name, shape, count in CLIPS:
      path = write_clip(os.path.join(folder, f'{shape[1]}x{shape[0]}_{count}.mp4'), shape, count,
                        FLAGS.video_frames)
      runs = {(s, t): run_path(predictors[t], path, s, FLAGS.video_frames)
              for s, t in (('full', 'none'), ('track', 'none'), ('track', 'flip'))}
      agreement = _agreement(runs['full', 'none']['rows'], runs['track', 'none']['rows'])
      base = runs['full', 'none']['frames_per_s']
      clip = report['clips'][name] = {'agreement': agreement}
      for (search, tta), figures in runs.items():
        figures.pop('rows')
        clip[f'{search}_{tta}'] = {**figures, 'speedup': round(figures['frames_per_s'] / base, 2)}
        ms = figures['ms_per_frame']
        faces = (f"{agreement['faces_both']} / {agreement['iou_ge_0_9']} / "
                 f"{agreement['same_emotion_all_pairs']} (IoU {agreement['mean_iou']}, max Δp "
                 f"{agreement['max_probability_gap']})" if (search, tta) == ('track', 'none') else '')
        tracks = agreement[f'tracks_{search}'] if tta == 'none' else ''
        lines.append(f"| {name} | {search} | {tta} | {figures['frames_per_s']:.1f} | "
                     f"{figures['frames_per_s'] / base:.1f}x | "
                     + ' | '.join(f'{ms[s]:.1f}' for s in ('decode', 'detect', 'crop', 'classify',
                                                            'track', 'write'))
                     + f' | {faces} | {tracks} |')
      print('\n'.join(lines[-3:]), flush=True)
  if FLAGS.video_camera_frames:
    report['camera'] = {f'{name}, {tta}': camera_run(predictors[tta], shape, count,
                                                     FLAGS.video_camera_frames)
                        for name, shape, count in CLIPS[:2] for tta in ('none', 'flip')}
    lines += ['', 'Camera path (live=True), frames given at 30 frames/s: frames analysed of '
              'those given: ' + '; '.join(f"{k} {v['analysed']} of {v['frames']}"
                                          for k, v in report['camera'].items())]
  report['classifier_ms'] = runtime_ms(predictors['none'])
  lines += ['', 'Classifier, ms a call of Predictor.logits by batch size (median of 15): ' + '; '.join(
      f'{runtime} ' + ', '.join(f'{n}: {ms:.1f}' for n, ms in by_size.items())
      for runtime, by_size in report['classifier_ms'].items())]
  if FLAGS.video_memory_frames:
    report['memory'] = memory_run(predictors['none'], FLAGS.video_memory_frames)
    samples = report['memory']['rss_mb_by_frame']
    lines += ['', f"RSS over {FLAGS.video_memory_frames} in-memory 640x480 frames with three faces "
              f"({FLAGS.video_memory_frames / 30:.0f} s of video at 30 frames/s): "
              + ', '.join(f'{mb:.0f} MiB at frame {f}' for f, mb in samples)]
  report['load_average_end'] = os.getloadavg()
  lines += ['', f"load average (1, 5, 15 min) at start {report['load_average_start']}, "
            f"at end {report['load_average_end']} on {os.cpu_count()} CPUs"]
  print('\n'.join(lines))
  if json_out:
    with open(json_out, 'w') as f:
      json.dump(report, f, indent=2, default=str)
  return report
