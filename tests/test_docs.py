"""The README and docs/ as users read them on GitHub: every relative link reaches a file or a
heading, the README stays a front door, and its commands name modules, flags and config fields
that exist. Plain text checks: no JAX, well under a second."""
import collections
import glob
import importlib.util
import os
import re
import shlex
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, 'README.md')
PAGES = [README] + sorted(glob.glob(os.path.join(ROOT, 'docs', '*.md')))
README_MAX_LINES = 250

# Pages written alongside these docs. A link to one is accepted only while the file is absent;
# once it exists, links to it (and to its headings) are checked like any other.
PENDING_PAGES = frozenset({
    'docs/video.md',             # video files and cameras
    'docs/serve.md',             # the HTTP API and page
    'docs/explain.md',           # saliency maps
    'docs/deploy.md',            # export, ONNX, onnxruntime without JAX
    'experiments/photo_tta.md',  # test-time augmentation on photos
})
# Commands the README shows whose module or flag is being added alongside these docs; accepted
# only while the module does not exist or does not define the flag.
PENDING_MODULES = frozenset({'fer_jax.serve'})
PENDING_FLAGS = frozenset({('fer_jax.predict', 'sample'), ('fer_jax.predict', 'explain')})
# Flags absl defines for every program.
ABSL_FLAGS = frozenset({'help', 'helpshort', 'helpfull', 'helpxml', 'flagfile', 'undefok',
                        'logtostderr', 'alsologtostderr', 'log_dir', 'verbosity', 'v',
                        'stderrthreshold', 'only_check_args', 'pdb', 'run_with_profiling'})

FENCE = re.compile(r'^\s*(```|~~~)')
LINK = re.compile(r'!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')
HEADING = re.compile(r'^(#{1,6})\s+(.*?)\s*#*\s*$')


def relative(path: str) -> str:
  return os.path.relpath(path, ROOT).replace(os.sep, '/')


def prose_lines(text: str) -> list[str]:
  """The lines outside fenced and indented code blocks, inline code removed."""
  lines, in_fence, previous_blank, in_indented = [], False, True, False
  for line in text.splitlines():
    if FENCE.match(line):
      in_fence = not in_fence
      lines.append('')
      continue
    if in_fence:
      lines.append('')
      continue
    indented = line.startswith('    ') and line.strip()
    in_indented = bool(indented and (previous_blank or in_indented))
    lines.append('' if in_indented else re.sub(r'`[^`]*`', '', line))
    previous_blank = not line.strip()
  return lines


def slug(heading: str) -> str:
  """GitHub's heading anchor: the rendered text, lower-cased, punctuation other than '-' and '_'
  dropped, spaces made hyphens (github-slugger)."""
  text = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', heading)   # links and images: their text
  text = text.replace('`', '')
  text = re.sub(r'(\*\*|__|\*)(.+?)\1', r'\2', text)            # emphasis markers
  text = re.sub(r'<[^>]+>', '', text).strip().lower()
  return re.sub(r'[^\w\- ]', '', text).replace(' ', '-')


def anchors(path: str) -> set[str]:
  """Every heading anchor of a Markdown file, with GitHub's -1, -2 suffixes for repeats."""
  with open(path, encoding='utf-8') as f:
    text = f.read()
  seen, found = collections.Counter(), set()
  in_fence = False
  for line in text.splitlines():
    if FENCE.match(line):
      in_fence = not in_fence
      continue
    match = None if in_fence else HEADING.match(line)
    if match:
      base = slug(match.group(2))
      found.add(f'{base}-{seen[base]}' if seen[base] else base)
      seen[base] += 1
  return found


def links(path: str) -> list[tuple[int, str]]:
  with open(path, encoding='utf-8') as f:
    lines = prose_lines(f.read())
  return [(number, match.group(1)) for number, line in enumerate(lines, 1)
          for match in LINK.finditer(line)]


def broken(page: str, target: str) -> str | None:
  """Why a link from page to target does not resolve on GitHub, or None."""
  if re.match(r'^[a-z][a-z0-9+.-]*:', target, re.I):  # https:, mailto:: not checked here
    return None
  path, _, anchor = target.partition('#')
  resolved = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
  name = relative(resolved)
  if name.startswith('..'):
    return f'{target} leaves the repository'
  if not os.path.exists(resolved):
    return None if name in PENDING_PAGES else f'{target}: {name} does not exist'
  if anchor and resolved.endswith('.md') and anchor not in anchors(resolved):
    return f'{target}: {name} has no heading with the anchor #{anchor}'
  return None


@pytest.mark.parametrize('page', PAGES, ids=relative)
def test_relative_links_reach_a_file_and_heading(page):
  problems = [f'{relative(page)}:{line}: {why}' for line, target in links(page)
              if (why := broken(page, target))]
  assert not problems, '\n'.join(problems)


def test_docs_has_a_page_per_task():
  names = {os.path.basename(p) for p in PAGES[1:]}
  expected = {'index.md', 'install.md', 'data.md', 'training.md', 'evaluation.md', 'photos.md',
              'finetune.md', 'multihost.md', 'studies.md', 'benchmark.md', 'model_card.md',
              'design.md'}
  assert expected <= names, f'missing: {sorted(expected - names)}'


def test_index_links_every_page():
  linked = {relative(os.path.normpath(os.path.join(ROOT, 'docs', target.partition('#')[0])))
            for _, target in links(os.path.join(ROOT, 'docs', 'index.md'))}
  missing = {relative(p) for p in PAGES[1:]} - linked - {'docs/index.md'}
  assert not missing, f'docs/index.md does not link {sorted(missing)}'


def test_training_page_lists_every_config():
  with open(os.path.join(ROOT, 'docs', 'training.md'), encoding='utf-8') as f:
    rows = set(re.findall(r'^\| `(configs/\w+\.py)` \|', f.read(), re.M))
  configs = {relative(p) for p in glob.glob(os.path.join(ROOT, 'configs', '*.py'))
             if not p.endswith('__init__.py')}
  assert not configs - rows, f'docs/training.md\'s table lacks {sorted(configs - rows)}'


def test_slug_follows_github():
  assert slug("Fields beyond the reference's recipe") == 'fields-beyond-the-references-recipe'
  assert slug('4. SGD vs Adam (one GPU, full data)') == '4-sgd-vs-adam-one-gpu-full-data'
  assert slug('Using `fer_jax` from Python') == 'using-fer_jax-from-python'
  assert slug('Dropout rate 0.3 / 0.5') == 'dropout-rate-03--05'


def test_readme_is_a_front_door():
  with open(README, encoding='utf-8') as f:
    count = len(f.read().splitlines())
  assert count <= README_MAX_LINES, f'README.md has {count} lines; move detail into docs/'


# The README's commands.

def bash_blocks(text: str) -> list[list[str]]:
  """The fenced bash blocks, each as its logical lines (backslash continuations joined)."""
  blocks = re.findall(r'^```(?:bash|sh|shell)\n(.*?)^```', text, re.M | re.S)
  return [[line for line in block.replace('\\\n', ' ').splitlines() if line.strip()]
          for block in blocks]


def section(text: str, title: str) -> str:
  match = re.search(rf'^## {re.escape(title)}\n(.*?)(?=^## |\Z)', text, re.M | re.S)
  assert match, f'README.md has no "## {title}" section'
  return match.group(1)


def commands(line: str) -> list[list[str]]:
  """The simple commands of a shell line (split at &&, ||, ;, |, &), environment assignments
  dropped, comments dropped."""
  lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
  lexer.whitespace_split = True
  out, current = [], []
  for token in lexer:
    if token in ('&&', '||', ';', '|', '&'):
      out.append(current)
      current = []
    else:
      current.append(token)
  out.append(current)
  return [[t for i, t in enumerate(c) if not (re.match(r'^\w+=', t) and
                                               all(re.match(r'^\w+=', u) for u in c[:i + 1]))]
          for c in out if c]


def module_file(module: str) -> str | None:
  base = os.path.join(ROOT, *module.split('.'))
  for candidate in (base + '.py', os.path.join(base, '__main__.py')):
    if os.path.isfile(candidate):
      return candidate
  return None


def defined_flags(path: str) -> set[str]:
  with open(path, encoding='utf-8') as f:
    return set(re.findall(r'DEFINE_\w+\(\s*[\'"](\w+)[\'"]', f.read()))


def config_fields(config_path: str) -> set[str]:
  """Every dotted field of a config file's get_config() (ml_collections only, no JAX)."""
  sys.path.insert(0, ROOT)
  try:
    spec = importlib.util.spec_from_file_location('_readme_config', config_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config().to_dict()
  finally:
    sys.path.remove(ROOT)
  fields = set()
  def walk(prefix, value):
    if isinstance(value, dict):
      for key, inner in value.items():
        walk(f'{prefix}{key}.', inner)
    fields.add(prefix.rstrip('.'))
  walk('', config)
  return fields


def command_problems(argv: list[str]) -> list[str]:
  """Why a `python -m fer_jax.X ...` command would not parse, as sentences ([] when it does)."""
  if len(argv) < 3 or argv[0] not in ('python', 'python3') or argv[1] != '-m':
    return []
  module = argv[2]
  if not module.startswith('fer_jax'):
    return []
  path = module_file(module)
  if path is None:
    return [] if module in PENDING_MODULES else [f'{module}: no such module in the repository']
  flags, problems = defined_flags(path) | ABSL_FLAGS, []
  config = None
  for i, arg in enumerate(argv[3:], 3):
    if not arg.startswith('--'):
      continue
    name = arg[2:].partition('=')[0]
    if name == 'config' and '=' not in arg and i + 1 < len(argv):
      config = argv[i + 1]
    elif name == 'config':
      config = arg.partition('=')[2]
    if name.startswith('config.'):
      if 'config' not in flags or config is None:
        problems.append(f'{arg}: {module} has no --config file before it')
      elif name[len('config.'):] not in config_fields(os.path.join(ROOT, config)):
        problems.append(f'{arg}: {config} has no field {name[len("config."):]}')
      continue
    known = name in flags or (name.startswith('no') and name[2:] in flags)
    if not known and (module, name) not in PENDING_FLAGS:
      problems.append(f'{arg}: {module} defines no flag --{name}')
  return problems


def readme_text() -> str:
  with open(README, encoding='utf-8') as f:
    return f.read()


def test_quick_start_installs_then_runs_one_command():
  blocks = bash_blocks(section(readme_text(), 'Quick start'))
  assert len(blocks) >= 2, 'the quick start needs an install-and-run block and a test block'
  first = blocks[0]
  assert first[0].startswith('git clone '), first
  assert 'pip install -e .' in first, first
  runs = [c for line in first for c in commands(line) if c[:2] == ['python', '-m']]
  assert len(runs) == 1 and runs[0][2].startswith('fer_jax.'), first
  assert any('pytest' in line for line in blocks[1]), blocks[1]


def test_quick_start_commands_parse():
  problems = [f'{line}: {problem}'
              for block in bash_blocks(section(readme_text(), 'Quick start'))
              for line in block for argv in commands(line) for problem in command_problems(argv)]
  assert not problems, '\n'.join(problems)


def test_every_readme_command_parses():
  problems = [f'{line}: {problem}' for block in bash_blocks(readme_text()) for line in block
              for argv in commands(line) for problem in command_problems(argv)]
  assert not problems, '\n'.join(problems)


OUTPUT_FLAGS = ('--out', '--annotate', '--csv', '--json_out', '--workdir', '--explain')


def test_readme_commands_use_no_files_nobody_has():
  """A fresh clone has the package (its samples included) and, after "Getting FER2013",
  $FER2013_PATH; commands may read nothing else."""
  fetched = ('$FER2013_PATH', 'fer_jax/samples/', 'configs/', 'experiments/', 'runs/', 'data')
  problems = []
  for block in bash_blocks(readme_text()):
    for line in block:
      for argv in commands(line):
        if argv[:2] != ['python', '-m'] or not argv[2].startswith('fer_jax'):
          continue
        for previous, arg in zip(argv[2:], argv[3:]):
          if arg.startswith(OUTPUT_FLAGS) or previous in OUTPUT_FLAGS:
            continue  # a file the command writes
          value = arg.partition('=')[2] if arg.startswith('--') else arg
          if re.search(r'\.(jpe?g|png|mp4|csv|gz|npz|xz)$', value) and not value.startswith(fetched):
            problems.append(f'{line}: {value} is a file a fresh clone does not have')
  assert not problems, '\n'.join(problems)


def test_command_checks_catch_mistakes():
  assert command_problems(['python', '-m', 'fer_jax.nope']) == [
      'fer_jax.nope: no such module in the repository']
  assert command_problems(['python', '-m', 'fer_jax.predict', '--pretrained', '--jsn'])
  assert command_problems(['python', '-m', 'fer_jax.main', '--config', 'configs/quick.py',
                           '--config.head_rl=1'])
  assert not command_problems(['python', '-m', 'fer_jax.main', '--config', 'configs/quick.py',
                               '--config.augment.steps=flip', '--workdir', 'runs/x'])
  assert not command_problems(['python', '-m', 'fer_jax.study', 'experiments/dropout.py',
                               '--nodry_run'])
