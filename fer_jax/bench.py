"""fer_jax beside the reference's PyTorch code, measured in one run on the same faces.

    pip install "fer_jax[bench]"        # torch and torchvision, for the PyTorch baselines
    python -m fer_jax.bench --data fer2013.csv.gz --json_out=bench.json
    python -m fer_jax.bench --notorch     # fer_jax alone, on generated faces

Rows: the train step (batch 32, 64, 256), inference (64, 512), the augmentation pipeline alone and
a training epoch with the 11-step augmentation at batch 32, each with PyTorch's figure and the
ratio. The PyTorch figures come from the project's baselines, fer_jax.bench_torch.reference (the
model step) and, with --data, fer_jax.bench_torch.pipeline (the reference's whole input pipeline),
run as subprocesses. Without torch installed the command stops before any timing with one
sentence (exit status 1) unless --notorch is given. Memory: XLA's analysis of each compiled function, and the peak RSS of this process and
of the PyTorch processes. `--epoch_fractions=0.25,0.5,1` adds epoch time against the number of
faces; `--steps_per_call=1,8` compares steps per compiled call. `--scaling=1x1,1x2,2x1` times the
train step on processes x devices (fer_jax.distributed over 127.0.0.1 for more than one process;
on one CPU a smoke test of that machinery, not a speed-up). `--video` times videos instead
(fer_jax/video_bench.py, docs/video.md). Absolute figures move 10-15 %
between runs on a shared CPU; compare the ratios from one run.
"""
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any, Callable

from absl import flags

from fer_jax import FerJaxError, cli, video_bench

FLAGS = flags.FLAGS
TORCH_BASELINES = ('fer_jax.bench_torch.reference', 'fer_jax.bench_torch.pipeline')


def define_flags() -> None:
  """Defined only when run as a program, so importing this module has no side effects."""
  flags.DEFINE_string('data', '', 'A FER2013 CSV whose Training faces to use; empty = generated.')
  flags.DEFINE_list('train_batch_sizes', ['32', '64', '256'], 'Train-step batch sizes.')
  flags.DEFINE_list('infer_batch_sizes', ['64', '512'], 'Inference batch sizes.')
  flags.DEFINE_integer('steps', 15, 'Timed calls per step measurement (after warm-up calls).')
  flags.DEFINE_integer('epoch_faces', 0, 'Faces in the timed epoch; 0 = all the Training faces.')
  flags.DEFINE_list('epoch_fractions', ['1'], 'Fractions of epoch_faces to time an epoch on.')
  flags.DEFINE_list('steps_per_call', ['1'], 'config.steps_per_call values to time the epoch with.')
  flags.DEFINE_bool('torch', True, 'Time the PyTorch baselines (fer_jax.bench_torch) beside '
                    'fer_jax; needs torch (and torchvision with --data). --notorch: fer_jax alone.')
  flags.DEFINE_integer('torch_batches', 40, 'Batches fer_jax.bench_torch.pipeline times.')
  flags.DEFINE_bool('breakdown', True, 'Time the parts of a batch-32 step on their own.')
  flags.DEFINE_string('json_out', '', 'Where to write the figures as JSON.')
  flags.DEFINE_bool('fast_cpu', True, 'Use the YNNPACK-for-dots-only XLA flag (fer_jax.cli).')
  flags.DEFINE_list('scaling', ['1x1', '1x2', '2x1'], 'PROCESSESxDEVICES layouts to time the '
                    'train step on, each in fresh processes; empty = none.')
  flags.DEFINE_integer('scaling_batch', 64, 'Global batch of the scaling rows.')
  flags.DEFINE_bool('serve', False, 'Instead of the rows above: the HTTP server under 1, 4 and 16 '
                    'concurrent clients beside one Predictor call per image (fer_jax.serve.load).')
  flags.DEFINE_bool('video', False, 'Time videos instead (fer_jax/video_bench.py): the tracked '
                    'face search beside a full search of every frame.')
  video_bench.define_flags()
  flags.DEFINE_string('scaling_worker', '', 'Internal: run as one process of a scaling layout, '
                      'given as PROCESSES:PORT:PROCESS_ID.')


def images_per_second(fn: Callable[[], Any], images_per_call: int, calls: int, warmup: int = 2) -> float:
  import jax
  for _ in range(warmup):
    jax.block_until_ready(fn())
  start = time.perf_counter()
  for _ in range(calls):
    jax.block_until_ready(fn())
  return calls * images_per_call / (time.perf_counter() - start)


def xla_memory_mb(jitted: Any, *args: Any) -> dict[str, float]:
  """XLA's memory analysis of the compiled function: arguments, outputs and scratch, in MiB."""
  analysis = jitted.lower(*args).compile().memory_analysis()
  mib = lambda n: round(n / 2**20, 1)
  return {'arguments_mb': mib(analysis.argument_size_in_bytes),
          'outputs_mb': mib(analysis.output_size_in_bytes),
          'temp_mb': mib(analysis.temp_size_in_bytes),
          'total_mb': mib(analysis.argument_size_in_bytes + analysis.output_size_in_bytes +
                          analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)}


def load_faces(path: str, minimum: int) -> tuple[Any, Any, str]:
  import numpy as np
  from fer_jax import data
  if path:
    from fer_jax.data.csv import read_fer2013_csv
    by_usage = read_fer2013_csv(path)
    if 'Training' not in by_usage:
      raise FerJaxError(f'--data={path} has no Training rows to time; pass the full FER2013 CSV.')
    images, labels = by_usage['Training']
    return images, labels, f'{len(images)} Training faces of {path}'
  images, labels = data.generated_faces(max(minimum, 512), seed=0)
  return images, labels.astype(np.int32), f'{len(images)} generated faces'


class FerJaxBench:
  """Everything timed on fer_jax's side, built from a config (default configs/enhanced.py, the
  reference's recipe)."""

  def __init__(self, images, labels, config: Any = None):
    import jax
    from configs import enhanced
    from fer_jax import models, optim, parallel, train
    self.images, self.labels = images, labels
    self.config = config if config is not None else enhanced.get_config()
    self.mesh = parallel.make_mesh()
    self.model = models.create_model(self.config.model)
    self.tx = optim.create_optimizer(self.config, optim.create_learning_rate_fns(self.config, 100))
    self.initial = jax.device_get(train.create_train_state(jax.random.PRNGKey(0), self.model, self.tx))

  def _state(self):
    from fer_jax import parallel
    return parallel.replicate(self.initial, self.mesh)

  def train_step(self, batch_size: int, steps: int, warmup: int = 2) -> dict[str, Any]:
    """The step alone (augmentation included) on one batch already on the device."""
    from fer_jax import parallel, train
    fns = train.make_train_functions(self.config, self.mesh, steps_per_epoch=100)
    split = parallel.replicate({'image': self.images[:batch_size], 'label': self.labels[:batch_size]},
                               self.mesh)
    import jax.numpy as jnp
    indices = jnp.arange(batch_size, dtype=jnp.int32)[None]
    holder = {'state': self._state()}
    memory = xla_memory_mb(fns[0], holder['state'], split, indices)

    def once():
      holder['state'], sums = fns[0](holder['state'], split, indices)
      return sums
    return {'images_per_s': images_per_second(once, batch_size, steps, warmup), **memory}

  def inference(self, batch_size: int, steps: int, folded: bool = False) -> dict[str, Any]:
    """Eval-mode forward pass; folded: BatchNorm folded into the layers (Predictor's opt-in
    fold_batchnorm)."""
    import jax
    from fer_jax import augment, batchnorm, models
    variables = {'params': self.initial.params, 'batch_stats': self.initial.batch_stats}
    model = self.model
    if folded:
      variables = batchnorm.fold(variables)
      model = models.create_model(self.config.model, folded_batchnorm=True)
    infer = jax.jit(lambda v, x: model.apply(v, augment.normalize(x), train=False))
    faces = jax.device_put(self.images[:batch_size])
    memory = xla_memory_mb(infer, variables, faces)
    return {'images_per_s': images_per_second(lambda: infer(variables, faces), batch_size, steps),
            **memory}

  def augmentation(self, batch_size: int, steps: int) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    from fer_jax import augment
    augment_fn = jax.jit(augment.make_train_augment(self.config.augment, 100))
    faces = jax.device_put(self.images[:batch_size])
    keys = iter(range(1_000_000))
    return {'images_per_s': images_per_second(
        lambda: augment_fn(faces, jax.random.key(next(keys)), jnp.int32(0)), batch_size, steps)}

  def breakdown(self, batch_size: int, steps: int) -> dict[str, float]:
    """Where a train step's time goes, by timing its parts alone: milliseconds per batch."""
    import jax
    import jax.numpy as jnp
    import optax
    from fer_jax import augment, models, train
    state = self._state()
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    faces = jax.device_put(self.images[:batch_size])
    labels = jax.device_put(self.labels[:batch_size])
    images = augment.normalize(faces)

    key = jax.random.PRNGKey(1)

    def loss(params, x, k, model):  # everything an argument: no part folds into a constant
      logits, _ = model.apply({'params': params, 'batch_stats': state.batch_stats}, x,
                              train=True, rngs={'dropout': k}, mutable=['batch_stats'])
      return train.cross_entropy(logits, labels).mean()
    no_dropout = models.create_model(self.config.model, dropout_rate=0.0)
    grads = jax.grad(loss)(state.params, images, key, self.model)
    aug = jax.jit(augment.make_train_augment(self.config.augment, 100))
    apply_eval = jax.jit(lambda v, x: self.model.apply(v, x, train=False))
    forward = jax.jit(lambda p, x, k: loss(p, x, k, self.model))
    backward = jax.jit(jax.grad(lambda p, x, k: loss(p, x, k, self.model)))
    backward_plain = jax.jit(jax.grad(lambda p, x, k: loss(p, x, k, no_dropout)))
    update = jax.jit(lambda g, o, p: optax.apply_updates(p, self.tx.update(g, o, p)[0]))
    parts = {
        'augmentation (11 steps)': lambda: aug(faces, jax.random.PRNGKey(0), jnp.int32(0)),
        'forward, eval mode': lambda: apply_eval(variables, images),
        'forward, train mode (batch statistics, dropout)': lambda: forward(state.params, images, key),
        'forward + backward': lambda: backward(state.params, images, key),
        'forward + backward without dropout': lambda: backward_plain(state.params, images, key),
        'optimizer update (Adam + L2, two groups)': lambda: update(grads, state.opt_state,
                                                                   state.params),
    }
    return {name: 1000 * batch_size / images_per_second(fn, batch_size, steps)
            for name, fn in parts.items()}

  def predictor(self, steps: int) -> dict[str, Any]:
    """The Predictor as a user calls it: host arrays in, probabilities out, compiled once."""
    from fer_jax.predictor import Predictor
    predictor = Predictor(self.config.model.to_dict(),
                          {'params': self.initial.params, 'batch_stats': self.initial.batch_stats},
                          tta='none')
    faces = self.images[:predictor.batch_size]
    predictor.probabilities(faces[:1])
    start = time.perf_counter()
    for i in range(3 * steps):
      predictor.probabilities(faces[i:i + 1])
    single_ms = (time.perf_counter() - start) / (3 * steps) * 1000
    return {'single_face_ms': round(single_ms, 2), 'batch_size': predictor.batch_size,
            'images_per_s': images_per_second(lambda: predictor.probabilities(faces),
                                              len(faces), steps)}

  def epoch(self, num_faces: int, steps_per_call: int) -> dict[str, Any]:
    """One epoch as train_and_evaluate runs it: the split on the device, the order drawn there,
    the 11 steps and the train step, steps_per_call steps per call; compilation timed apart."""
    import jax
    from fer_jax import parallel, train
    config = self.config.copy_and_resolve_references()
    batch_size = config.batch_size
    steps_per_epoch = num_faces // batch_size
    if steps_per_epoch < 1:
      raise SystemExit(f'error: an epoch of {num_faces} faces has no batch of {batch_size}; raise '
                       '--epoch_faces or the fractions.')
    steps_per_call = config.steps_per_call = min(steps_per_call, steps_per_epoch)
    p_train_steps, p_epoch_batches = train.make_train_functions(config, self.mesh, steps_per_epoch)
    split = parallel.replicate({'image': self.images[:num_faces], 'label': self.labels[:num_faces]},
                               self.mesh)
    state = self._state()
    start = time.perf_counter()
    indices = p_epoch_batches(config.seed, 1, num_faces, batch_size)
    compiled = p_train_steps.lower(state, split, indices[:steps_per_call]).compile()
    compile_seconds = time.perf_counter() - start
    state, _ = compiled(state, split, indices[:steps_per_call])  # warm-up call
    jax.block_until_ready(state)
    start = time.perf_counter()
    for first in range(0, steps_per_epoch - steps_per_call + 1, steps_per_call):
      state, sums = compiled(state, split, indices[first:first + steps_per_call])
    jax.block_until_ready(sums)
    seconds = time.perf_counter() - start
    timed = (steps_per_epoch // steps_per_call) * steps_per_call * batch_size
    return {'faces': num_faces, 'steps_per_call': steps_per_call, 'seconds': round(seconds, 2),
            'compile_seconds': round(compile_seconds, 2), 'images_per_s': timed / seconds}


def check_torch(with_pipeline: bool) -> None:
  """Before any timing, so a missing torch is one sentence, not n/a columns (or a failure) after
  the whole JAX part; torchvision serves the pipeline baseline (--data) only."""
  absent = [name for name in ('torch', 'torchvision')[:1 + with_pipeline]
            if importlib.util.find_spec(name) is None]  # looked up, not imported
  if absent:
    raise FerJaxError(f'the PyTorch baselines need {" and ".join(absent)}, which this Python '
                      f'({sys.executable}) lacks; pip install "fer_jax[bench]", or pass --notorch '
                      'to time fer_jax alone.')


def run_torch(module: str, args: list[str]) -> dict[str, Any]:
  """One PyTorch baseline as a subprocess; its JSON line plus the peak RSS of PyTorch's
  processes."""
  result = subprocess.run([sys.executable, '-m', module, *args], capture_output=True, text=True)
  if result.returncode:
    last = (result.stderr.strip().splitlines() or ['no message'])[-1]
    raise FerJaxError(f'the PyTorch baseline {module} failed ({last}); run it alone with the '
                      'same flags to see why.')
  figures = json.loads(result.stdout.strip().splitlines()[-1])
  figures['peak_rss_mb_all_children'] = round(
      resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
  return figures


def scaling_worker(spec: str, batch_size: int, steps: int) -> None:
  """One process of a scaling layout: times the train step on the run's global mesh."""
  from fer_jax import distributed
  processes, port, process_id = (int(part) for part in spec.split(':'))
  watch = None
  if processes > 1:
    watch = distributed.initialize(f'127.0.0.1:{port}', processes, process_id, auto=False,
                                   initialization_timeout=120, heartbeat_timeout=30,
                                   resume_hint=lambda: 'run the benchmark again.')
  import contextlib
  import jax
  with distributed.stop_together(watch) if watch else contextlib.nullcontext():
    images, labels, _ = load_faces('', batch_size)
    figures = FerJaxBench(images, labels).train_step(batch_size, steps)
    if jax.process_index() == 0:
      print(json.dumps({'processes': jax.process_count(), 'devices': jax.device_count(),
                        'images_per_s': figures['images_per_s']}))


def parse_layouts(layouts: list[str]) -> list[tuple[str, int, int]]:
  """--scaling's PROCESSESxDEVICES layouts as (layout, processes, devices), checked before any
  timing starts."""
  parsed = []
  for layout in layouts:
    try:
      processes, devices = (int(part) for part in layout.lower().split('x'))
    except ValueError:
      raise SystemExit(f'error: --scaling names {layout!r}; give PROCESSESxDEVICES layouts such '
                       'as 1x1,1x2,2x1.') from None
    parsed.append((layout, processes, devices))
  return parsed


def run_scaling(layouts: list[tuple[str, int, int]], batch_size: int,
                steps: int) -> list[dict[str, Any]]:
  """Each layout in its own fresh processes, with forced CPU devices."""
  import socket
  rows = []
  for layout, processes, devices in layouts:
    with socket.socket() as probe:
      probe.bind(('127.0.0.1', 0))
      port = probe.getsockname()[1]
    env = {**os.environ, 'JAX_NUM_CPU_DEVICES': str(devices)}
    workers = [subprocess.Popen(
        [sys.executable, '-m', 'fer_jax.bench', f'--scaling_worker={processes}:{port}:{i}',
         f'--scaling_batch={batch_size}', f'--steps={steps}', f'--fast_cpu={FLAGS.fast_cpu}'],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(processes)]
    outputs = [worker.communicate() for worker in workers]
    failed = [err.strip() for (_, err), worker in zip(outputs, workers) if worker.returncode]
    if failed:
      last_line = failed[0].splitlines()[-1] if failed[0] else 'no message'
      raise SystemExit(f'error: the {layout} scaling run failed: {last_line}')
    rows.append({'layout': layout, **json.loads(outputs[0][0].strip().splitlines()[-1])})
  return rows


def _row(name: str, batch: Any, ours: float, theirs: float | None, memory: str = '') -> str:
  ratio = f'{ours / theirs:.2f}x' if theirs else 'n/a'
  shown = f'{theirs:.1f}' if theirs else 'n/a'
  return f'| {name} | {batch} | {ours:.1f} | {shown} | {ratio} | {memory} |'


def main(argv: list[str]) -> None:
  del argv
  if FLAGS.video:
    video_bench.main(cli.prepare_output(FLAGS.json_out, '--json_out') if FLAGS.json_out else '')
    return
  if FLAGS.scaling_worker:
    scaling_worker(FLAGS.scaling_worker, FLAGS.scaling_batch, FLAGS.steps)
    return
  if FLAGS.serve:
    from fer_jax.serve import load
    load.main(FLAGS.json_out and cli.prepare_output(FLAGS.json_out, '--json_out'))
    return
  layouts = parse_layouts(FLAGS.scaling)
  if FLAGS.torch:
    check_torch(with_pipeline=bool(FLAGS.data))
  if FLAGS.json_out:
    cli.prepare_output(FLAGS.json_out, '--json_out')
  import jax
  jax.config.update('jax_enable_compilation_cache', False)  # compile times measured, not loaded
  train_sizes = [int(b) for b in FLAGS.train_batch_sizes]
  infer_sizes = [int(b) for b in FLAGS.infer_batch_sizes]
  images, labels, source = load_faces(FLAGS.data, max(train_sizes + infer_sizes))
  epoch_faces = FLAGS.epoch_faces or len(images)
  bench = FerJaxBench(images, labels)
  report: dict[str, Any] = {'jax': jax.__version__, 'devices': str(jax.devices()),
                            'xla_flags': os.environ.get('XLA_FLAGS', ''), 'faces': source}
  report['train_step'] = {b: bench.train_step(b, FLAGS.steps) for b in train_sizes}
  report['inference'] = {b: bench.inference(b, FLAGS.steps) for b in infer_sizes}
  report['inference_folded'] = {b: bench.inference(b, FLAGS.steps, folded=True) for b in infer_sizes}
  report['augmentation'] = bench.augmentation(32, FLAGS.steps)
  report['predictor'] = bench.predictor(FLAGS.steps)
  if FLAGS.breakdown:
    report['breakdown_ms'] = bench.breakdown(32, FLAGS.steps)
  report['epoch'] = [bench.epoch(int(float(f) * epoch_faces), int(k))
                     for f in FLAGS.epoch_fractions for k in FLAGS.steps_per_call]
  report['peak_rss_mb'] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
  report['scaling'] = run_scaling(layouts, FLAGS.scaling_batch, FLAGS.steps)

  torch_figures: dict[str, Any] = {}
  if FLAGS.torch:
    for b in sorted(set(train_sizes + infer_sizes)):
      torch_figures[b] = run_torch(TORCH_BASELINES[0],
                                   ['--batch-size', str(b), '--steps', str(FLAGS.steps)])
    if FLAGS.data:
      torch_figures['pipeline'] = run_torch(
          TORCH_BASELINES[1],
          ['--data', os.path.abspath(FLAGS.data), '--batches', str(FLAGS.torch_batches)])
  report['pytorch'] = torch_figures

  def theirs(key: Any, field: str) -> float | None:
    return (torch_figures.get(key) or {}).get(field)
  lines = [f'fer_jax on {source}; JAX {jax.__version__}; XLA_FLAGS={report["xla_flags"]!r}', '',
           '| measurement | batch | fer_jax img/s | PyTorch img/s | ratio | fer_jax XLA memory |',
           '|---|---:|---:|---:|---:|---|']
  for b, figures in report['train_step'].items():
    lines.append(_row('train step', b, figures['images_per_s'], theirs(b, 'train_images_per_s'),
                      f"{figures['total_mb']} MiB ({figures['temp_mb']} scratch)"))
  for name, key in (('inference', 'inference'), ('inference, BatchNorm folded', 'inference_folded')):
    for b, figures in report[key].items():
      lines.append(_row(name, b, figures['images_per_s'], theirs(b, 'eval_images_per_s'),
                        f"{figures['total_mb']} MiB ({figures['temp_mb']} scratch)"))
  lines.append(_row('augmentation, 11 steps', 32, report['augmentation']['images_per_s'],
                    theirs('pipeline', 'augment_images_per_s')))
  for figures in report['epoch']:
    lines.append(_row(f"epoch with augmentation ({figures['faces']} faces, "
                      f"{figures['steps_per_call']} steps/call)", 32, figures['images_per_s'],
                      theirs('pipeline', 'epoch_images_per_s'),
                      f"{figures['seconds']} s + {figures['compile_seconds']} s compile"))
  predictor = report['predictor']
  lines.append(_row('Predictor.probabilities (host in/out)', predictor['batch_size'],
                    predictor['images_per_s'], None, f"{predictor['single_face_ms']} ms for one face"))
  step32 = report['train_step'].get(32, next(iter(report['train_step'].values())))
  lines += ['', f"augmentation / train step: {report['augmentation']['images_per_s'] / step32['images_per_s']:.1f}x; "
            f"peak RSS: fer_jax {report['peak_rss_mb']} MiB, PyTorch "
            f"{max((f or {}).get('peak_rss_mb_all_children', 0) for f in torch_figures.values()) if torch_figures else 'n/a'} MiB"]
  if 'breakdown_ms' in report:
    step_ms = 1000 * 32 / step32['images_per_s']
    lines += ['', f'where a batch-32 step\'s {step_ms:.0f} ms go (each part timed alone):', '',
              '| part | ms per batch of 32 | share of the step |', '|---|---:|---:|']
    lines += [f'| {name} | {ms:.1f} | {100 * ms / step_ms:.0f} % |'
              for name, ms in report['breakdown_ms'].items()]
  if report['scaling']:
    base = report['scaling'][0]['images_per_s']
    lines += ['', f'train step on processes x devices (global batch {FLAGS.scaling_batch}; '
              'processes joined over 127.0.0.1; the devices share this machine\'s cores):', '',
              f'| processes x devices | img/s | vs {report["scaling"][0]["layout"]} |',
              '|---|---:|---:|']
    lines += [f"| {row['layout']} | {row['images_per_s']:.1f} | {row['images_per_s'] / base:.2f}x |"
              for row in report['scaling']]
  print('\n'.join(lines))
  if FLAGS.json_out:
    with open(FLAGS.json_out, 'w') as f:
      json.dump(report, f, indent=2, default=str)


if __name__ == '__main__':
  define_flags()
  cli.run(main, fast_cpu=lambda: FLAGS.fast_cpu)
