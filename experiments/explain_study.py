"""Where the shipped model looks, and whether its saliency maps point at what it uses.

    python experiments/explain_study.py --faces 128 --steps 8 --out docs/figures

On the first --faces PublicTest faces (shipped weights, no TTA), prints Markdown tables of:
1. the share of Grad-CAM mass (the map's positive part scaled to sum 1; target: the true class) in
   an eye box and a mouth box, per true class, beside the boxes' share of the face's area;
2. a deletion curve for Grad-CAM, integrated gradients (black and blurred baselines, --steps) and
   random order: accuracy as the top fraction of each face's pixels (by the map for the predicted
   class) is set to mid-grey (128); lower is a more faithful map;
3. integrated gradients' completeness error on --completeness_faces faces against steps;
4. milliseconds per face for each method (batch 16, after a warm-up call) beside the plain
   forward pass, measured in the same run (integrated gradients' cost grows linearly with steps).
Writes explain_deletion.png and explain_regions.png into --out, and explain_study.json. About 6
minutes at the defaults on a loaded 2-core CPU.
"""
import json
import os
import time

from absl import app, flags
import numpy as np

FLAGS = flags.FLAGS
flags.DEFINE_string('data', '../shared/data/fer2013/fer2013.csv.gz', 'FER2013 CSV with PublicTest.')
flags.DEFINE_integer('faces', 128, 'First N PublicTest faces.')
flags.DEFINE_integer('steps', 8, 'Integrated-gradients steps for the deletion curve.')
flags.DEFINE_integer('completeness_faces', 2, 'Faces for the completeness-against-steps table.')
flags.DEFINE_string('out', 'docs/figures', 'Folder for the figures and explain_study.json.')
flags.DEFINE_bool('cost_only', False, 'Measure only the milliseconds per face (part 4).')

# Boxes (rows, columns) on FER2013's 48x48 framing, drawn on the mean face in explain_regions.png.
REGIONS = {'eyes': (slice(13, 25), slice(6, 42)), 'mouth': (slice(32, 44), slice(13, 35))}
FRACTIONS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)


def deleted(faces: np.ndarray, order: np.ndarray, fraction: float) -> np.ndarray:
  """Faces with their first `fraction` of pixels in `order` (N, 2304) set to 128."""
  out = faces.reshape(len(faces), -1).copy()
  count = int(round(fraction * out.shape[1]))
  np.put_along_axis(out, order[:, :count], 128, axis=1)
  return out.reshape(faces.shape)


def timed(fn, repeats: int = 2) -> float:
  fn()
  start = time.perf_counter()
  for _ in range(repeats):
    fn()
  return (time.perf_counter() - start) / repeats


def main(argv: list[str]) -> None:
  del argv
  from fer_jax import cli
  cli.configure_cpu_backend()
  from fer_jax import evaluation
  from fer_jax.predictor import Predictor
  os.makedirs(FLAGS.out, exist_ok=True)
  faces, labels = evaluation.load_eval_data(FLAGS.data, 'validation')
  faces, labels = faces[:FLAGS.faces].reshape(-1, 48, 48), labels[:FLAGS.faces]
  predictor = Predictor.pretrained(tta='none')
  predicted = predictor.probabilities(faces).argmax(-1)
  results = {'faces': len(faces), 'accuracy': float((predicted == labels).mean()),
             'steps': FLAGS.steps}
  if not FLAGS.cost_only:
    explain_parts(predictor, faces, labels, predicted, results)
  cost(predictor, faces, predicted, results)
  name = 'explain_cost.json' if FLAGS.cost_only else 'explain_study.json'
  with open(os.path.join(FLAGS.out, name), 'w') as f:
    json.dump(results, f, indent=2)


def explain_parts(predictor, faces, labels, predicted, results) -> None:
  """Parts 1-3: eye and mouth mass, deletion curves, completeness."""
  from fer_jax import EMOTIONS, explain, explain_figures
  import matplotlib.pyplot as plt

  # 1. Grad-CAM mass in the eye and mouth boxes, per true class.
  mass = explain_figures.mass(predictor.explain(faces, labels, 'grad_cam'))
  area = {name: float(np.zeros((48, 48))[box].size / 2304) for name, box in REGIONS.items()}
  rows = {}
  print(f'## Grad-CAM mass, {len(faces)} PublicTest faces, target the true class\n')
  print('| class | faces | eyes | mouth | rest |\n|---|---:|---:|---:|---:|')
  for index, name in enumerate(EMOTIONS):
    chosen = labels == index
    if not chosen.any():
      continue
    share = {region: float(mass[chosen][:, box[0], box[1]].sum(axis=(1, 2)).mean())
             for region, box in REGIONS.items()}
    rows[name] = {'faces': int(chosen.sum()), **share}
    print(f'| {name} | {int(chosen.sum())} | {share["eyes"]:.2f} | {share["mouth"]:.2f} | '
          f'{1 - share["eyes"] - share["mouth"]:.2f} |')
  print(f'| (area of the box) | | {area["eyes"]:.2f} | {area["mouth"]:.2f} | '
        f'{1 - area["eyes"] - area["mouth"]:.2f} |\n')
  results['regions'], results['region_area'] = rows, area

  # 2. Deletion curves, maps for the predicted class.
  maps = {'Grad-CAM': predictor.explain(faces, predicted, 'grad_cam'),
          'IG (black)': predictor.explain(faces, predicted, 'integrated_gradients',
                                          steps=FLAGS.steps, baseline='black'),
          'IG (blurred)': predictor.explain(faces, predicted, 'integrated_gradients',
                                            steps=FLAGS.steps, baseline='blurred')}
  orders = {name: np.argsort(-m.reshape(len(m), -1), axis=1, kind='stable')
            for name, m in maps.items()}
  rng = np.random.default_rng(0)
  orders['random'] = np.stack([rng.permutation(2304) for _ in faces])
  curves = {name: [float((predictor.probabilities(deleted(faces, order, f)).argmax(-1)
                          == labels).mean()) for f in FRACTIONS]
            for name, order in orders.items()}
  results['deletion'] = {'fractions': FRACTIONS, 'accuracy': curves}
  print('## Deletion: accuracy with the most salient share of pixels set to grey\n')
  print('| order | ' + ' | '.join(f'{f:.0%}' for f in FRACTIONS) + ' | mean |')
  print('|---|' + '---:|' * (len(FRACTIONS) + 1))
  for name, curve in curves.items():
    mean = float(np.trapezoid(curve, FRACTIONS))
    results['deletion'].setdefault('area', {})[name] = mean
    print(f'| {name} | ' + ' | '.join(f'{a:.3f}' for a in curve) + f' | {mean:.3f} |')
  print()
  fig, axis = plt.subplots(figsize=(5.5, 4))
  for name, curve in curves.items():
    area = results['deletion']['area'][name]
    axis.plot(FRACTIONS, curve, 'o-', label=f'{name} (area {area:.3f})')
  axis.set_xlabel('share of pixels set to grey, most salient first')
  axis.set_ylabel(f'accuracy ({len(faces)} PublicTest faces)')
  axis.grid(alpha=0.3)
  axis.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(FLAGS.out, 'explain_deletion.png'), dpi=90)
  plt.close(fig)

  # Mean face with the boxes, and the mean Grad-CAM mass per true class.
  fig, axes = plt.subplots(1, 8, figsize=(15, 2.4))
  axes[0].imshow(faces.mean(0), cmap='gray')
  for name, (rows_, cols) in REGIONS.items():
    axes[0].add_patch(plt.Rectangle((cols.start - 0.5, rows_.start - 0.5), cols.stop - cols.start,
                                    rows_.stop - rows_.start, fill=False, color='yellow'))
  axes[0].set_title('mean face, boxes', fontsize=9)
  axes[0].axis('off')
  for index, name in enumerate(EMOTIONS):
    chosen = labels == index
    if chosen.any():
      explain_figures.overlay(axes[index + 1], faces[chosen].mean(0), mass[chosen].mean(0),
                              f'{name} (n={int(chosen.sum())})')
    else:
      axes[index + 1].axis('off')
  fig.tight_layout()
  fig.savefig(os.path.join(FLAGS.out, 'explain_regions.png'), dpi=80)
  plt.close(fig)

  # 3. Completeness of integrated gradients against steps (shipped model).
  few, few_targets = faces[:FLAGS.completeness_faces], predicted[:FLAGS.completeness_faces]
  model, variables = predictor.model, predictor.variables
  results['completeness'] = {}
  print('## Integrated gradients: |sum - (logit(x) - logit(baseline))| / |difference|, max over '
        f'{len(few)} faces\n\n| steps | black | blurred |\n|---:|---:|---:|')
  for steps in (16, 64, 256):
    errors = []
    for baseline in ('black', 'blurred'):
      base = (np.zeros_like(few, np.float32) if baseline == 'black' else np.asarray(
          explain.blurred(np.asarray(few, np.float32)[..., None], 4.0))[..., 0])
      difference = (explain.target_logits(model, variables, few, few_targets)
                    - explain.target_logits(model, variables, base, few_targets))
      total = np.asarray(explain.explain(model, variables, few, few_targets,
                                         'integrated_gradients', baseline=baseline,
                                         steps=steps)).sum(axis=(1, 2))
      errors.append(float(np.max(np.abs(total - difference) / np.abs(difference))))
    results['completeness'][steps] = errors
    print(f'| {steps} | {errors[0]:.3f} | {errors[1]:.3f} |')
  print()



def cost(predictor, faces, predicted, results) -> None:
  """Part 4: milliseconds per face, batch 16, beside the forward pass (the same 16 faces through
  one jitted forward, no padding)."""
  from fer_jax import explain
  batch = faces[:16]
  costs = {'forward (logits)': lambda: explain.target_logits(
               predictor.model, predictor.variables, batch, predicted[:16]),
           'Grad-CAM': lambda: predictor.explain(batch, predicted[:16], 'grad_cam'),
           'Grad-CAM + SmoothGrad (16 samples)': lambda: predictor.explain(
               batch, predicted[:16], 'grad_cam', smoothgrad_samples=16),
           f'IG black, {FLAGS.steps} steps': lambda: predictor.explain(
               batch, predicted[:16], 'integrated_gradients', steps=FLAGS.steps),
           f'IG blurred, {FLAGS.steps} steps': lambda: predictor.explain(
               batch, predicted[:16], 'integrated_gradients', steps=FLAGS.steps,
               baseline='blurred')}
  results['ms_per_face'] = {}
  print(f'## Cost, batch of {len(batch)} faces\n')
  print('| method | ms per face | x forward |\n|---|---:|---:|')
  for name, fn in costs.items():
    results['ms_per_face'][name] = 1000 * timed(fn) / len(batch)
    ratio = results['ms_per_face'][name] / results['ms_per_face']['forward (logits)']
    print(f'| {name} | {results["ms_per_face"][name]:.1f} | {ratio:.0f} |')


if __name__ == '__main__':
  app.run(main)
