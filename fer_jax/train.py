"""The one training loop: TrainState, train_step, eval_step and train_and_evaluate(config, workdir).

Randomness is a function of (seed, step) and (seed, epoch) only, so a run resumed from its latest
checkpoint draws the same batches, flips and dropout masks as one that never stopped.
"""
import dataclasses
import functools
import json
import os
import time
from typing import Any, Callable

from absl import logging
import flax
from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from fer_jax import LABEL_MAP, FerJaxError, augment, data, metrics, models, optim, parallel, plots
from fer_jax.checkpoint import BEST, LATEST, Checkpoints


class TrainState(train_state.TrainState):
  """flax's TrainState plus BatchNorm statistics and the run's base PRNG key."""
  batch_stats: Any
  rng: jax.Array


def create_train_state(rng: jax.Array, model: flax.linen.Module,
                       tx: optax.GradientTransformation) -> TrainState:
  init_key, state_key = jax.random.split(rng)
  variables = models.init_variables(model, init_key)
  return TrainState.create(apply_fn=model.apply, params=variables['params'],
                           batch_stats=variables['batch_stats'], tx=tx, rng=state_key)


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  if not label_smoothing:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def train_step(state: TrainState, batch: dict[str, jax.Array], augment_fn: augment.AugmentFn,
               label_smoothing: float = 0.0) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimiser step on a batch of uint8 faces; returns summed metrics for the epoch."""
  augment_key, dropout_key = jax.random.split(jax.random.fold_in(state.rng, state.step))
  images = augment_fn(batch['image'], augment_key, state.step)

  def loss_fn(params):
    logits, updates = state.apply_fn({'params': params, 'batch_stats': state.batch_stats}, images,
                                     train=True, rngs={'dropout': dropout_key},
                                     mutable=['batch_stats'])
    loss = cross_entropy(logits, batch['label'], label_smoothing).mean()
    return loss, (logits, updates['batch_stats'])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  count = batch['label'].shape[0]
  return state, {'loss_sum': loss * count,
                 'correct': jnp.sum(jnp.argmax(logits, -1) == batch['label']),
                 'count': jnp.asarray(count, jnp.float32)}


def eval_step(state: TrainState, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Summed loss and correct count over the batch's real (mask = 1) examples."""
  logits = state.apply_fn({'params': state.params, 'batch_stats': state.batch_stats},
                          augment.normalize(batch['image']), train=False)
  mask = batch['mask']
  return {'loss_sum': jnp.sum(cross_entropy(logits, batch['label']) * mask),
          'correct': jnp.sum((jnp.argmax(logits, -1) == batch['label']) * mask),
          'count': jnp.sum(mask)}


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def padded_batches(split: data.Split, batch_size: int):
  """Fixed-size evaluation batches; the last is padded and masked, so nothing recompiles."""
  for start in range(0, len(split), batch_size):
    index = np.arange(start, start + batch_size)
    valid = index < len(split)
    index = np.where(valid, index, 0)
    yield {'image': split.images[index], 'label': split.labels[index],
           'mask': valid.astype(np.float32)}


def summarize(sums: dict[str, Any]) -> tuple[float, float]:
  sums = jax.device_get(sums)
  count = max(float(sums['count']), 1.0)
  return float(sums['loss_sum']) / count, float(sums['correct']) / count


def evaluate(state: TrainState, split: data.Split, batch_size: int,
             eval_fn: Callable) -> tuple[float, float]:
  """(mean loss, accuracy) over a whole split."""
  total = None
  for batch in padded_batches(split, batch_size):
    sums = eval_fn(state, batch)
    total = sums if total is None else jax.tree_util.tree_map(jnp.add, total, sums)
  return summarize(total)


def _state_tree(state: TrainState) -> dict[str, Any]:
  return {'params': state.params, 'batch_stats': state.batch_stats, 'opt_state': state.opt_state,
          'step': state.step, 'rng': state.rng}


@dataclasses.dataclass
class EarlyStopping:
  patience: int
  best_accuracy: float = -1.0
  best_epoch: int = 0
  epochs_without_improvement: int = 0

  def update(self, epoch: int, accuracy: float) -> bool:
    """Records an epoch; True when it is a new best."""
    if accuracy > self.best_accuracy:
      self.best_accuracy, self.best_epoch, self.epochs_without_improvement = accuracy, epoch, 0
      return True
    self.epochs_without_improvement += 1
    return False

  @property
  def should_stop(self) -> bool:
    return self.patience > 0 and self.epochs_without_improvement >= self.patience


def checkpoint_meta(config: ml_collections.ConfigDict, epoch: int, stopper: EarlyStopping,
                    history: list[dict[str, Any]]) -> dict[str, Any]:
  """The seed's model_info: what a checkpoint needs to be resumed or served on its own."""
  return {'epoch': epoch, 'early_stopping': dataclasses.asdict(stopper), 'history': history,
          'model_config': config.model.to_dict(), 'train_config': json.loads(config.to_json()),
          'label_map': {str(k): v for k, v in LABEL_MAP.items()}}


def validate_config(config: ml_collections.ConfigDict) -> None:
  """The checks that need no data, so a bad config (or study) fails before any work starts."""
  augment.validate(config.augment)
  if config.model.name not in models.MODELS:
    raise FerJaxError(f'config.model.name={config.model.name!r} is not a model; use one of '
                      f'{", ".join(models.MODELS)}.')
  lr_fns = optim.create_learning_rate_fns(config, steps_per_epoch=1)
  optim.create_optimizer(config, lr_fns)
  for field in ('batch_size', 'eval_batch_size', 'num_epochs'):
    if config[field] < 1:
      raise FerJaxError(f'config.{field}={config[field]} must be at least 1.')
  if not 0.0 <= config.model.dropout_rate < 1.0:
    raise FerJaxError(f'config.model.dropout_rate={config.model.dropout_rate} is out of range; '
                      'set it in [0, 1).')
  if not 0.0 <= config.label_smoothing < 1.0:
    raise FerJaxError(f'config.label_smoothing={config.label_smoothing} is out of range; '
                      'set it in [0, 1).')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains config's model, evaluating and checkpointing every epoch; resumes from workdir."""
  validate_config(config)  # a bad config fails before minutes of data preparation
  os.makedirs(workdir, exist_ok=True)
  mesh = parallel.make_mesh()
  parallel.check_divisible(config.batch_size, mesh, 'config.batch_size')
  parallel.check_divisible(config.eval_batch_size, mesh, 'config.eval_batch_size')

  train_split = data.load_split(config.data, config.data.train_split, config.data.max_train_examples)
  eval_split = data.load_split(config.data, config.data.eval_split, config.data.max_eval_examples)
  steps_per_epoch = len(train_split) // config.batch_size
  if steps_per_epoch == 0:
    raise FerJaxError(f'config.batch_size={config.batch_size} is larger than the {len(train_split)} '
                      'training faces; lower it or use more data.')
  logging.info('data: %d train faces (%s), %d eval faces (%s), %d steps per epoch',
               len(train_split), train_split.name, len(eval_split), eval_split.name, steps_per_epoch)

  model = models.create_model(config.model)
  lr_fns = optim.create_learning_rate_fns(config, steps_per_epoch)
  state = create_train_state(jax.random.PRNGKey(config.seed), model,
                             optim.create_optimizer(config, lr_fns))
  model_summary = models.summary(model, {'params': state.params, 'batch_stats': state.batch_stats})
  logging.info('\n%s', model_summary)
  with open(os.path.join(workdir, 'model_summary.txt'), 'w') as f:
    f.write(model_summary + '\n')
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json_best_effort(indent=2))

  checkpoints = Checkpoints(workdir)
  stopper, history, start_epoch = EarlyStopping(config.early_stopping_patience), [], 1
  if checkpoints.latest_step() is not None:
    tree, meta = checkpoints.restore(LATEST, _state_tree(state))
    state = state.replace(**tree)
    # The counters continue; the patience is the current config's, so it can be changed on resume.
    stopper = EarlyStopping(**{**meta['early_stopping'], 'patience': config.early_stopping_patience})
    history, start_epoch = meta['history'], meta['epoch'] + 1
    logging.info('resumed from %s at epoch %d (step %d)', workdir, meta['epoch'], int(state.step))
  metrics.write_history(workdir, history)
  state = parallel.replicate(state, mesh)

  augment_fn = augment.make_train_augment(config.augment, steps_per_epoch)
  p_train_step = parallel.data_parallel(functools.partial(
      train_step, augment_fn=augment_fn, label_smoothing=config.label_smoothing), mesh)
  p_eval_step = parallel.data_parallel(eval_step, mesh, donate_state=False)

  for epoch in range(start_epoch, config.num_epochs + 1):
    if stopper.should_stop:
      logging.info('early stopping: no improvement for %d epochs (best %.4f at epoch %d)',
                   stopper.epochs_without_improvement, stopper.best_accuracy, stopper.best_epoch)
      break
    epoch_start = time.perf_counter()
    order = epoch_permutation(len(train_split), config.seed, epoch)
    bar = metrics.ProgressBar(steps_per_epoch, f'epoch {epoch}', config.progress_bar)
    sums = None
    for step in range(steps_per_epoch):
      index = order[step * config.batch_size:(step + 1) * config.batch_size]
      batch = parallel.shard_batch(
          {'image': train_split.images[index], 'label': train_split.labels[index]}, mesh)
      state, step_sums = p_train_step(state, batch)
      sums = step_sums if sums is None else jax.tree_util.tree_map(jnp.add, sums, step_sums)
      if (step + 1) % config.log_every_steps == 0 or step + 1 == steps_per_epoch:
        bar.update(step + 1, f'loss {float(sums["loss_sum"]) / float(sums["count"]):.4f}')
    bar.close()
    train_loss, train_accuracy = summarize(sums)
    if not np.isfinite(train_loss):
      raise FerJaxError(f'training diverged: the train loss is {train_loss} in epoch {epoch}; lower '
                        'config.head_lr / config.backbone_lr or check the data.')
    train_seconds = time.perf_counter() - epoch_start
    eval_loss, eval_accuracy = evaluate(state, eval_split, config.eval_batch_size, p_eval_step)
    step_now = int(state.step)
    record = {'epoch': epoch, 'step': step_now, 'train_loss': train_loss,
              'train_accuracy': train_accuracy, 'eval_loss': eval_loss,
              'eval_accuracy': eval_accuracy, 'eval_split': eval_split.name,
              'backbone_lr': float(lr_fns['backbone'](step_now - 1)),
              'head_lr': float(lr_fns['head'](step_now - 1)),
              'epoch_seconds': time.perf_counter() - epoch_start,
              'train_images_per_second': steps_per_epoch * config.batch_size / train_seconds}
    history.append(record)
    improved = stopper.update(epoch, eval_accuracy)
    meta = checkpoint_meta(config, epoch, stopper, history)
    tree = jax.device_get(_state_tree(state))
    checkpoints.save(LATEST, step_now, tree, meta)
    if improved:
      checkpoints.save(BEST, step_now, tree, meta)
    checkpoints.wait()
    metrics.write_history(workdir, history)
    logging.info(metrics.format_epoch(record))
  checkpoints.close()
  if history:
    plots.learning_curves(history, os.path.join(workdir, 'learning_curves.png'))
  return state
