"""The one training loop: TrainState, train_step, eval_step and train_and_evaluate(config, workdir).

Randomness is a function of (seed, step) and (seed, epoch) only, so a run resumed from its latest
checkpoint draws the same batches, flips and dropout masks as one that never stopped. The training
split lives on the device; each epoch's order is drawn there and `config.steps_per_call` steps run
per compiled call (lax.scan), so batch 32 on an accelerator is not bound by dispatch or the host.
"""
import contextlib
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

from fer_jax import (FerJaxError, Interrupted, augment, batchnorm, config_checks, data, distributed,
                     evaluation, finetune, metrics, models, optim, parallel, plots, plural,
                     regularize)
from fer_jax import checkpoint
from fer_jax.checkpoint import BEST, LATEST, Checkpoints
from fer_jax import run_state
from fer_jax.run_state import RunState


class TrainState(train_state.TrainState):
  """flax's TrainState plus BatchNorm statistics, the run's base PRNG key and, with
  config.ema_decay, an exponential moving average of the params that evaluation and serving use."""
  batch_stats: Any
  rng: jax.Array
  ema_params: Any = None

  def for_evaluation(self) -> 'TrainState':
    return self if self.ema_params is None else self.replace(params=self.ema_params)


def create_train_state(rng: jax.Array, model: flax.linen.Module, tx: optax.GradientTransformation,
                       model_config: ml_collections.ConfigDict | None = None,
                       ema: bool = False) -> TrainState:
  """Fresh state; a transfer model's backbone comes from model_config.pretrained_weights if set."""
  init_key, state_key = jax.random.split(rng)
  variables = models.init_variables(model, init_key)
  if model_config is not None and model_config.pretrained_weights:
    from fer_jax.models import weights
    variables = weights.import_backbone(
        variables, model_config.name, model_config.pretrained_weights,
        model_config.first_conv, model_config.stride_in_1x1)
  return TrainState.create(apply_fn=model.apply, params=variables['params'],
                           batch_stats=variables['batch_stats'], tx=tx, rng=state_key,
                           # a copy: the train step donates the state, and a shared buffer
                           # cannot be donated twice
                           ema_params=jax.tree_util.tree_map(jnp.copy, variables['params'])
                           if ema else None)


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  if not label_smoothing:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def train_step(state: TrainState, batch: dict[str, jax.Array], augment_fn: augment.AugmentFn,
               label_smoothing: float = 0.0, mix_fn: regularize.MixFn | None = None,
               class_weights: jax.Array | None = None, num_classes: int = 7,
               ema_decay: float = 0.0) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimiser step on a batch of uint8 faces; returns summed metrics for the epoch.

  mix_fn (mixup / cutmix / random erasing) turns the labels into soft targets; class_weights
  weighs each face's loss by its (mixed) class."""
  augment_key, dropout_key = jax.random.split(jax.random.fold_in(state.rng, state.step))
  images = augment_fn(batch['image'], augment_key, state.step)
  targets = None
  if mix_fn is not None or class_weights is not None:
    targets = jax.nn.one_hot(batch['label'], num_classes)
  if mix_fn is not None:
    images, targets = mix_fn(images, targets, jax.random.fold_in(augment_key, 1))

  def loss_fn(params):
    logits, updates = state.apply_fn({'params': params, 'batch_stats': state.batch_stats}, images,
                                     train=True, rngs={'dropout': dropout_key},
                                     mutable=['batch_stats'])
    if targets is None:
      per_face = cross_entropy(logits, batch['label'], label_smoothing)
    else:
      smoothed = optax.smooth_labels(targets, label_smoothing) if label_smoothing else targets
      per_face = optax.softmax_cross_entropy(logits, smoothed)
      if class_weights is not None:
        per_face = per_face * (targets @ class_weights)
    return per_face.mean(), (logits, updates.get('batch_stats', {}))  # {}: no BatchNorm

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  if state.ema_params is not None:  # the average warms up: decay min(d, (1 + t) / (10 + t))
    decay = jnp.minimum(ema_decay, (1.0 + state.step) / (10.0 + state.step))
    state = state.replace(ema_params=jax.tree_util.tree_map(
        lambda e, p: decay * e + (1 - decay) * p, state.ema_params, state.params))
  count = batch['label'].shape[0]
  # loss_sum: the objective (smoothing, mixing, class weights); ce_sum: plain cross-entropy on the
  # true labels, the quantity evaluation reports, so the two curves compare.
  return state, {'loss_sum': loss * count,
                 'ce_sum': jnp.sum(cross_entropy(logits, batch['label'])),
                 'correct': jnp.sum(jnp.argmax(logits, -1) == batch['label']),
                 'count': jnp.asarray(count, jnp.float32)}


def eval_logits(state: TrainState, faces: jax.Array) -> jax.Array:
  return state.apply_fn({'params': state.params, 'batch_stats': state.batch_stats},
                        augment.normalize(faces), train=False)


def train_steps(state: TrainState, split_arrays: dict[str, jax.Array], batch_indices: jax.Array,
                step_fn: Callable, batch_sharding: Any = None) -> tuple[TrainState, dict[str, jax.Array]]:
  """len(batch_indices) train steps in one call (lax.scan): each batch is gathered from the
  device-resident split, so a step costs no host transfer and k steps one dispatch."""
  def body(state, index):
    if batch_sharding is not None:  # each device gathers, augments and steps on its own slice
      index = jax.lax.with_sharding_constraint(index, batch_sharding)
    batch = {'image': split_arrays['image'][index], 'label': split_arrays['label'][index]}
    if batch_sharding is not None:
      batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
    return step_fn(state, batch)
  if batch_indices.shape[0] == 1:
    return body(state, batch_indices[0])
  # XLA:CPU runs convolutions inside a loop body ~20x slower (measured: 26.7 s vs 1.2 s for a
  # batch-32 step), so on CPU the k steps are unrolled; accelerators keep the compact loop.
  unroll = batch_indices.shape[0] if jax.default_backend() == 'cpu' else 1
  state, sums = jax.lax.scan(body, state, batch_indices, unroll=unroll)
  return state, jax.tree_util.tree_map(lambda x: x.sum(0), sums)


def epoch_batches(seed: int, epoch: int, num_examples: int, batch_size: int) -> jax.Array:
  """(steps, batch_size) example indices: a permutation drawn on the device from (seed, epoch)."""
  key = jax.random.fold_in(jax.random.PRNGKey(seed), epoch)
  steps = num_examples // batch_size
  return jax.random.permutation(key, num_examples)[:steps * batch_size].reshape(steps, batch_size)


def make_train_functions(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                         steps_per_epoch: int,
                         class_weights: np.ndarray | None = None) -> tuple[Callable, Callable]:
  """The compiled pieces of an epoch, shared by train_and_evaluate and the benchmark:
  p_train_steps(state, split_arrays, batch_indices) and p_epoch_batches(seed, epoch, n, batch)."""
  augment_fn = augment.make_train_augment(config.augment, steps_per_epoch)
  step_fn = functools.partial(
      train_step, augment_fn=augment_fn, label_smoothing=config.label_smoothing,
      mix_fn=regularize.make_mix_fn(config), num_classes=config.model.num_classes,
      ema_decay=config.ema_decay,
      class_weights=None if class_weights is None else jnp.asarray(class_weights))
  p_train_steps = jax.jit(
      functools.partial(train_steps, step_fn=step_fn, batch_sharding=parallel.batch_sharded(mesh)),
      in_shardings=parallel.replicated(mesh), out_shardings=parallel.replicated(mesh),
      donate_argnums=0)
  p_epoch_batches = jax.jit(epoch_batches, static_argnums=(0, 2, 3),
                            out_shardings=parallel.replicated(mesh))
  return p_train_steps, p_epoch_batches


def summarize(sums: dict[str, Any]) -> tuple[float, float, float]:
  """(objective, cross-entropy, accuracy) per face of an epoch's summed train metrics."""
  sums = jax.device_get(sums)
  count = max(float(sums['count']), 1.0)
  return (float(sums['loss_sum']) / count, float(sums['ce_sum']) / count,
          float(sums['correct']) / count)


def _state_tree(state: TrainState) -> dict[str, Any]:
  tree = {'params': state.params, 'batch_stats': state.batch_stats, 'opt_state': state.opt_state,
          'step': state.step, 'rng': state.rng}
  if state.ema_params is not None:  # checkpoint.load_for_inference serves these when present
    tree['ema_params'] = state.ema_params
  return tree


def checkpoint_meta(config: ml_collections.ConfigDict, run: RunState, classes: tuple[str, ...],
                    fingerprints: dict[str, dict[str, Any]]) -> dict[str, Any]:
  """What a checkpoint needs to be resumed or served on its own (the reference's model_info),
  and the fingerprints of the faces it was trained and selected on, which a resume must match."""
  return {'run': run.to_json(), 'model_config': config.model.to_dict(),
          'train_config': json.loads(config.to_json()),
          'label_map': {str(i): name for i, name in enumerate(classes)}, 'data': fingerprints}


def saves_latest(epoch: int, config: ml_collections.ConfigDict, run: RunState) -> bool:
  """Every config.checkpoint_every_epochs epochs, and at the run's last epoch, early stop included."""
  return (epoch % config.checkpoint_every_epochs == 0 or epoch == config.num_epochs
          or run.should_stop(config.early_stopping_patience))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains config's model, evaluating and checkpointing every epoch; resumes from workdir.

  One run per workdir (a second one is refused while the first lives); a run that fails before
  its first checkpoint removes the workdir it created, so nothing is left half written. In a
  multi-process run (fer_jax.distributed) every process calls this; process 0 owns the workdir."""
  distributed.check_same_config(config.to_json())
  config_checks.validate(config)  # a bad config fails before minutes of data preparation
  primary = distributed.is_primary()
  logging.info('workdir %s: checkpoints/, metrics.jsonl, config.json, model_summary.txt and '
               'learning_curves.png go there; an existing run there is resumed',
               os.path.abspath(workdir))
  if primary:
    config_checks.warn_about_recipe(config)
  created = checkpoint.prepare_workdir(workdir) if primary else False
  try:
    with checkpoint.WorkdirLock(workdir) if primary else contextlib.nullcontext():
      return _train(config, workdir)
  except BaseException as e:
    steps = {kind: checkpoint.committed_steps(workdir, kind) for kind in (LATEST, BEST)}
    removed = created and not any(steps.values()) and checkpoint.remove_workdir(workdir)
    if isinstance(e, KeyboardInterrupt):  # Ctrl-C, or SIGTERM (fer_jax.cli)
      raise Interrupted(checkpoint.what_was_saved(workdir, steps, removed), e) from None
    if isinstance(e, checkpoint.CheckpointWriteError):
      raise checkpoint.CheckpointWriteError(
          f'{str(e).rstrip(".")}; {checkpoint.what_was_saved(workdir, steps, removed)}'
      ) from None
    raise


def _train(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  mesh = parallel.make_mesh()
  parallel.check_divisible(config.batch_size, mesh, 'config.batch_size')
  parallel.check_divisible(config.eval_batch_size, mesh, 'config.eval_batch_size')

  train_split = data.load_split(config.data, config.data.train_split, config.data.max_train_examples)
  eval_split = data.load_split(config.data, config.data.eval_split, config.data.max_eval_examples)
  for split, field in ((train_split, 'max_train_examples'), (eval_split, 'max_eval_examples')):
    if not len(split):
      raise FerJaxError(f'the {split.name} split has no faces; give it faces, or check '
                        f'config.data.{field} and the data source.')
  fingerprints = {'train': train_split.fingerprint(), 'eval': eval_split.fingerprint()}
  distributed.check_same_data(fingerprints)
  classes = train_split.classes  # the class list comes from the data
  if eval_split.classes != classes:
    raise FerJaxError(f'the {train_split.name} split has classes {", ".join(classes)} but the '
                      f'{eval_split.name} split has {", ".join(eval_split.classes)}; give both the '
                      'same class folders.')
  if config.model.num_classes != len(classes):
    logging.info('the data has %s (%s), so the model is built with config.model.num_classes=%d '
                 '(the config says %d)', plural(len(classes), 'class'),
                 ', '.join(classes), len(classes), config.model.num_classes)
    config = config.copy_and_resolve_references()
    config.model.num_classes = len(classes)
  steps_per_epoch = len(train_split) // config.batch_size
  if steps_per_epoch == 0:
    raise FerJaxError(f'config.batch_size={config.batch_size} is larger than the {len(train_split)} '
                      'training faces; lower it or use more data.')
  logging.info('data: %s (%s), %s (%s), %s per epoch', plural(len(train_split), 'train face'),
               train_split.name, plural(len(eval_split), 'eval face'), eval_split.name,
               plural(steps_per_epoch, 'step'))

  model = models.create_model(config.model)
  lr_fns = optim.create_learning_rate_fns(config, steps_per_epoch)
  state = create_train_state(jax.random.PRNGKey(config.seed), model,
                             optim.create_optimizer(config, lr_fns), config.model,
                             ema=config.ema_decay > 0)
  checkpoints = Checkpoints(workdir)
  primary = distributed.is_primary()  # the one process that logs and writes the run's files
  board = None
  try:
    tree, run = run_state.resume(checkpoints, config, workdir, _state_tree(state), classes,
                                 steps_per_epoch, fingerprints)
    state = state.replace(**tree) if tree is not None else state
    if run.epoch == 0 and config.init_from:
      params, batch_stats = finetune.initialise(state.params, state.batch_stats, config.init_from,
                                                config.model.name, list(classes))
      state = state.replace(params=params, batch_stats=batch_stats,
                            ema_params=None if state.ema_params is None else
                            jax.tree_util.tree_map(np.copy, params))
    if run.epoch >= config.num_epochs or run.should_stop(config.early_stopping_patience):
      logging.info('nothing to train: the run in %s ended at epoch %d (best %.4f at epoch %d); '
                   'raise --config.num_epochs (or --config.early_stopping_patience) to train on',
                   workdir, run.epoch, run.best.best_score, run.best.best_epoch)
      return state
    checkpoints.check_room_for_run(_state_tree(state), config.num_epochs - run.epoch,
                                   config.checkpoint_every_epochs)
    if primary:
      model_summary = models.summary(model, {'params': state.params,
                                             'batch_stats': state.batch_stats})
      logging.info('\n%s', model_summary)
      with open(os.path.join(workdir, 'model_summary.txt'), 'w') as f:
        f.write(model_summary + '\n')
      with open(os.path.join(workdir, 'config.json'), 'w') as f:
        f.write(config.to_json_best_effort(indent=2))
      metrics.write_history(workdir, run.history)
    state = parallel.replicate(state, mesh)

    weights = None
    if config.class_weighting:
      weights = regularize.class_weights(train_split.labels, config.model.num_classes,
                                         config.class_weighting)
      logging.info('class weights: %s', np.round(weights, 3).tolist())
    p_train_steps, p_epoch_batches = make_train_functions(config, mesh, steps_per_epoch, weights)
    split_arrays = parallel.replicate({'image': train_split.images, 'label': train_split.labels}, mesh)
    p_eval_logits = parallel.data_parallel(eval_logits, mesh, donate_state=False)
    extra_evals = evaluation.load_named_evals(config_checks.parse_evals(config.evals), classes)
    # Evaluation statistics re-measured on clean faces after every epoch (fer_jax.batchnorm).
    recalibration_faces = min(config.bn_recalibration_faces, len(train_split))
    recalibration_batch = min(config.eval_batch_size, recalibration_faces) or 1
    # The faces are an argument: captured in the closure they would be a constant, and XLA would
    # try to fold the convolutions over them at compile time (minutes).
    recalibrate_fn = jax.jit(
        lambda params, stats, faces: batchnorm.recalibrate(
            config.model, {'params': params, 'batch_stats': stats}, faces, recalibration_batch),
        out_shardings=parallel.replicated(mesh))
    recalibration_images = split_arrays['image'][:recalibration_faces]

    board = metrics.TensorBoard(workdir, enabled=primary)
    if run.epoch == 0 and primary:  # what the augmentation does to the first training faces, once
      board.faces('augmented_faces', augment.make_train_augment(config.augment, steps_per_epoch)(
          jnp.asarray(train_split.images[:32]), jax.random.PRNGKey(config.seed), 0), 0)
    for epoch in range(run.epoch + 1, config.num_epochs + 1):
      if run.should_stop(config.early_stopping_patience):
        logging.info('early stopping: no improvement for %s (best %.4f at epoch %d)',
                     plural(run.best.epochs_since_best, 'epoch'), run.best.best_score, run.best.best_epoch)
        break
      distributed.barrier(f'epoch_{epoch}')  # host work since the last collective differs
      epoch_start = time.perf_counter()
      batch_indices = p_epoch_batches(config.seed, epoch, len(train_split), config.batch_size)
      bar = metrics.ProgressBar(steps_per_epoch, f'epoch {epoch}', config.progress_bar and primary)
      sums, next_log = None, config.log_every_steps
      for start in range(0, steps_per_epoch, config.steps_per_call):
        stop = min(start + config.steps_per_call, steps_per_epoch)
        state, call_sums = p_train_steps(state, split_arrays, batch_indices[start:stop])
        sums = call_sums if sums is None else jax.tree_util.tree_map(jnp.add, sums, call_sums)
        if stop >= next_log or stop == steps_per_epoch:
          next_log = stop + config.log_every_steps
          running_loss = float(sums['loss_sum']) / float(sums['count'])
          bar.update(stop, f'loss {running_loss:.4f}')
          board.train_loss(int(state.step), running_loss)
      bar.close()
      train_objective, train_loss, train_accuracy = summarize(sums)
      # Against epoch 1's loss, or in epoch 1 the loss of a uniform guess, ln(classes).
      reference, reference_name = ((run.history[0]['train_objective'], "epoch 1's") if run.history
                                   else (np.log(config.model.num_classes), 'a uniform guess\'s'))
      if not np.isfinite(train_objective) or train_objective > 100 * reference:
        raise FerJaxError(
            f'training diverged in epoch {epoch}: the train loss is {train_objective:.4g}'
            + (f', over 100x {reference_name} {reference:.4g}' if np.isfinite(train_objective)
               else '')
            + (f'; the checkpoints of epoch {run.epoch} and before are kept. Lower '
               'config.head_lr / config.backbone_lr (or config.weight_decay), or check the data, '
               'then rerun (it resumes from the latest checkpoint, with the new rates) or start a '
               'new --workdir.' if run.epoch else
               '; nothing was saved before it. Lower config.head_lr / config.backbone_lr (or '
               'config.weight_decay), or check the data, then rerun.'))
      train_seconds = time.perf_counter() - epoch_start
      if recalibration_faces and state.batch_stats:
        state = state.replace(
            batch_stats=recalibrate_fn(state.for_evaluation().params, state.batch_stats,
                                       recalibration_images))
      evaluated = state.for_evaluation()
      logits_fn = lambda faces: jax.device_get(  # noqa: E731
          p_eval_logits(evaluated, parallel.shard_batch(faces, mesh)))
      variants = ['none'] + ([config.select_tta] if config.select_tta != 'none' else [])
      reports = evaluation.split_reports(logits_fn, eval_split.images, eval_split.labels,
                                         list(classes), variants, config.eval_batch_size)
      report = reports['none']
      eval_loss, eval_accuracy = report['loss'], report['accuracy']
      extra_reports = {name: evaluation.split_reports(logits_fn, faces, labels, list(classes),
                                                      ['none'], config.eval_batch_size)['none']
                       for name, (faces, labels) in extra_evals.items()}
      step_now, lr_scale = int(state.step), run.lr_scale  # the factor this epoch trained with
      run.epoch = epoch
      if config.lr_schedule == 'plateau':  # then the next epoch's
        next_scale = run.update_plateau(eval_accuracy, config.plateau_factor,
                                        config.plateau_patience, config.plateau_min_scale)
        state = state.replace(opt_state=parallel.replicate(
            optim.with_plateau_scale(state.opt_state, next_scale), mesh))
      record = {'epoch': epoch, 'step': step_now, 'train_loss': train_loss,
                'train_objective': train_objective,
                'train_accuracy': train_accuracy, 'eval_loss': eval_loss,
                'eval_accuracy': eval_accuracy, 'eval_macro_f1': report['macro_f1'],
                'eval_split': eval_split.name,
                'backbone_lr': float(lr_fns['backbone'](step_now - 1)) * lr_scale,
                'head_lr': float(lr_fns['head'](step_now - 1)) * lr_scale,
                'epoch_seconds': time.perf_counter() - epoch_start,
                'train_images_per_second': steps_per_epoch * config.batch_size / train_seconds}
      if config.lr_schedule == 'plateau':
        record['lr_scale'] = lr_scale
      for variant in variants[1:]:
        record[f'eval_accuracy_{variant}'] = reports[variant]['accuracy']
        record[f'eval_macro_f1_{variant}'] = reports[variant]['macro_f1']
      for name, extra in extra_reports.items():
        record.update({f'{name}_{key}': extra[key] for key in ('loss', 'accuracy', 'macro_f1')})
      # The best checkpoint (and early stopping) by config.select_metric of config.select_tta.
      record['selection_score'] = reports[config.select_tta][config.select_metric]
      run.history.append(record)
      improved = run.best.update(epoch, record['selection_score'])
      if improved:
        board.confusion(np.array(reports[config.select_tta]['confusion_matrix']), list(classes),
                        step_now)
      meta = checkpoint_meta(config, run, classes, fingerprints)
      save_latest = saves_latest(epoch, config, run)
      if save_latest or improved:
        checkpoints.save_epoch(step_now, jax.device_get(_state_tree(state)), meta, best=improved,
                               latest=save_latest, best_step=run.best_step)
      if primary:
        metrics.write_history(workdir, run.history)
      board.epoch(record)
      logging.info(metrics.format_epoch(record))
    checkpoints.check_best(run.best_step)
    if primary and run.history:
      plots.learning_curves(run.history, os.path.join(workdir, 'learning_curves.png'))
    if primary:
      metrics.log_outputs(workdir, run.epoch, run.best.best_score, run.best.best_epoch)
    return state
  except BaseException:  # a save cut short leaves a temporary folder: not kept as debris
    checkpoints.close()
    if primary:
      checkpoint.remove_partial_steps(workdir)
    raise
  finally:  # Orbax's threads and files, and the event file, let go whatever happened
    checkpoints.close()
    if board is not None:
      board.close()
