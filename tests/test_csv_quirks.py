"""FER2013 CSVs as spreadsheets and hand edits leave them: the harmless quirks read as the plain
file does, and every malformed field is one sentence naming the file and the line an editor shows."""
import gzip
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import enhanced
from conftest import REPO, random_rows
from fer_jax import FerJaxError, data
from fer_jax.data import csv as fer_csv

ROWS = random_rows(6, usages=('Training', 'PublicTest', 'PrivateTest'), seed=3)


def _line(label, pixels, usage, sep: str = ' ') -> str:
  return f'{label},{sep.join(map(str, np.asarray(pixels).reshape(-1)))},{usage}'


def _plain_lines() -> list[str]:
  return ['emotion,pixels,Usage'] + [_line(*row) for row in ROWS]


def _assert_reads_rows(path) -> None:
  by_usage = fer_csv.read_fer2013_csv(str(path))
  assert {usage: len(labels) for usage, (_, labels) in by_usage.items()} == {
      'Training': 2, 'PublicTest': 2, 'PrivateTest': 2}
  for usage, (images, labels) in by_usage.items():
    expected = [(label, np.asarray(pixels, np.uint8).tobytes())
                for label, pixels, row_usage in ROWS if row_usage == usage]
    assert [(int(l), im.tobytes()) for l, im in zip(labels, images)] == expected
    assert images.dtype == np.uint8 and labels.dtype == np.int32


def _blank_lines(lines: list[str]) -> list[str]:
  return ['', '   '] + lines[:3] + ['', ',,'] + lines[3:] + ['', '']


def _quoted_line_break(lines: list[str]) -> list[str]:
  label, pixels, usage = lines[1].split(',')
  return [lines[0], f'{label},"{pixels[:40]}\n{pixels[40:]}",{usage}'] + lines[2:]


QUIRKS = {
    'bom': lambda lines: '\ufeff' + '\n'.join(lines) + '\n',
    'crlf': lambda lines: '\r\n'.join(lines) + '\r\n',
    'no_final_line_end': lambda lines: '\n'.join(lines),
    'blank_lines_anywhere': lambda lines: '\n'.join(_blank_lines(lines)),
    'bom_crlf_blank_lines': lambda lines: '\ufeff' + '\r\n'.join(_blank_lines(lines)),
    'spaces_around_fields': lambda lines: '\n'.join(
        ' , '.join(f' {field} ' for field in line.split(',')) for line in lines),
    'header_case_and_spaces': lambda lines: '\n'.join([' Emotion ,PIXELS, usage '] + lines[1:]),
    'columns_reordered_and_extra': lambda lines: '\n'.join(
        ['Usage,source,pixels,emotion'] + [f'{u},kaggle,{p},{e}' for e, p, u in
                                           (line.split(',') for line in lines[1:])]),
    'tabs_and_double_spaces': lambda lines: '\n'.join(
        [lines[0], lines[1].replace(' ', '\t'), lines[2].replace(' ', '  ')] + lines[3:]),
    'quoted_line_break': lambda lines: '\n'.join(_quoted_line_break(lines)),
}


@pytest.mark.parametrize('quirk', sorted(QUIRKS))
def test_harmless_quirks_read_every_row(tmp_path, quirk):
  path = tmp_path / 'faces.csv'
  path.write_bytes(QUIRKS[quirk](_plain_lines()).encode())
  _assert_reads_rows(path)


def test_excel_csv_utf8_gzipped_reads_every_row(tmp_path):
  path = tmp_path / 'faces.csv.gz'
  path.write_bytes(gzip.compress(QUIRKS['bom_crlf_blank_lines'](_plain_lines()).encode()))
  _assert_reads_rows(path)


def test_the_tfds_builder_reads_an_excel_file(tmp_path):
  """Training reads through the TFDS builder, which reads through fer_jax.data.csv."""
  path = tmp_path / 'faces.csv'
  path.write_bytes(QUIRKS['bom_crlf_blank_lines'](_plain_lines()).encode())
  config = enhanced.get_config().data
  config.csv_path, config.tfds_dir = str(path), str(tmp_path / 'tfds')
  split = data.load_split(config, 'test')
  expected = sorted((label, np.asarray(pixels, np.uint8).tobytes())
                    for label, pixels, usage in ROWS if usage == 'PrivateTest')
  assert sorted((int(l), im.tobytes()) for l, im in zip(split.labels, split.images)) == expected


def _pixels(first: str = '7', count: int = 2304) -> str:
  return ' '.join([first] + ['7'] * (count - 1))


GOOD = f'3,{_pixels()},Training'
# (the file's lines, the sentence after '<path>, '): a blank line 3 must not shift the count.
BAD = {
    'empty_pixels': ([GOOD, '', '4,,PublicTest'],
                     'line 4: field "pixels" is empty, but a 48x48 face needs 2304 values 0-255; '
                     'fix or delete the row.'),
    'spaces_for_pixels': ([GOOD, '', '4,   ,PublicTest'],
                          'line 4: field "pixels" is empty, but a 48x48 face needs 2304 values 0-255; '
                          'fix or delete the row.'),
    'too_few_pixels': ([GOOD, '', f'4,{_pixels(count=2303)},Training'],
                       'line 4: field "pixels" holds 2303 values, but a 48x48 face needs 2304; fix or '
                       'delete the row.'),
    'too_many_pixels': ([GOOD, '', f'4,{_pixels(count=2305)},Training'],
                        'line 4: field "pixels" holds 2305 values, but a 48x48 face needs 2304; fix '
                        'or delete the row.'),
    'pixel_not_an_integer': ([GOOD, '', f'4,{_pixels("7.5")},Training'],
                             'line 4: field "pixels" has the value \'7.5\' at position 1, but pixels '
                             'must be integers 0-255; fix the row.'),
    'pixel_above_255': ([GOOD, '', f'4,{_pixels("256")},Training'],
                        'line 4: field "pixels" has the value \'256\' at position 1, but pixels must '
                        'be integers 0-255; fix the row.'),
    'pixel_negative': ([GOOD, '', f'4,{_pixels("-1")},Training'],
                       'line 4: field "pixels" has the value \'-1\' at position 1, but pixels must be '
                       'integers 0-255; fix the row.'),
    'pixel_huge': ([GOOD, '', f'4,{_pixels("9" * 5000)},Training'],
                   'line 4: field "pixels" has the value \'99999999999999999999...\' at position 1, '
                   'but pixels must be integers 0-255; fix the row.'),
    'emotion_7': ([GOOD, '', f'7,{_pixels()},Training'],
                  'line 4: field "emotion" is \'7\', but it must be an integer label 0-6; fix the row.'),
    'emotion_word': ([GOOD, '', f'happy,{_pixels()},Training'],
                     'line 4: field "emotion" is \'happy\', but it must be an integer label 0-6; fix '
                     'the row.'),
    'emotion_empty': ([GOOD, '', f',{_pixels()},Training'],
                      'line 4: field "emotion" is empty, but it must be an integer label 0-6; fix the '
                      'row.'),
    'usage_unknown': ([GOOD, '', f'4,{_pixels()},Validation'],
                      'line 4: field "Usage" is \'Validation\', but it must be one of Training, '
                      'PublicTest, PrivateTest; fix the row.'),
    'usage_empty': ([GOOD, '', f'4,{_pixels()},'],
                    'line 4: field "Usage" is empty, but it must be one of Training, PublicTest, '
                    'PrivateTest; fix the row.'),
    'field_missing': ([GOOD, '', f'4,{_pixels()}'],
                      'line 4: expected 3 fields (emotion,pixels,Usage), found 2; fix or delete the '
                      'row.'),
    'field_extra': ([GOOD, '', f'4,{_pixels()},Training,x'],
                    'line 4: expected 3 fields (emotion,pixels,Usage), found 4; fix or delete the '
                    'row.'),
    'pixels_split_by_commas': ([GOOD, '', '4,1,2,3,Training'],
                               'line 4: expected 3 fields (emotion,pixels,Usage), found 5; fix or '
                               'delete the row.'),
}


def _bad_file(tmp_path, lines: list[str], header: str = 'emotion,pixels,Usage',
              line_end: str = '\n'):
  path = tmp_path / 'bad.csv'
  path.write_bytes(line_end.join([header] + lines + ['']).encode())
  return path


@pytest.mark.parametrize('line_end', ['\n', '\r\n'])
@pytest.mark.parametrize('case', sorted(BAD))
def test_each_malformed_field_is_one_sentence_with_its_line(tmp_path, case, line_end):
  lines, sentence = BAD[case]
  path = _bad_file(tmp_path, lines, line_end=line_end)
  with pytest.raises(FerJaxError) as error:
    fer_csv.read_fer2013_csv(str(path))
  assert str(error.value) == f'{path}, {sentence}'


def test_the_first_bad_row_is_named_and_lines_count_a_quoted_line_break(tmp_path):
  quoted = f'3,"{_pixels()[:40]}\n{_pixels()[40:]}",Training'  # lines 2 and 3
  path = _bad_file(tmp_path, [quoted, '', f'9,{_pixels()},Training', '4,,Training'])
  with pytest.raises(FerJaxError, match=r'bad\.csv, line 5: field "emotion" is \'9\''):
    fer_csv.read_fer2013_csv(str(path))


HEADERS = {
    'emotion,pixels': "the header is 'emotion,pixels', but FER2013 needs 'emotion,pixels,Usage'; "
                      'add the Usage column (Training, PublicTest or PrivateTest).',
    'pixels': "the header is 'pixels', but FER2013 needs 'emotion,pixels,Usage'; add the emotion "
              'column (the label 0-6) and the Usage column (Training, PublicTest or PrivateTest).',
    'label,pixels,Usage': "the header is 'label,pixels,Usage', but FER2013 needs "
                          "'emotion,pixels,Usage'; add the emotion column (the label 0-6).",
    'emotion,pixels,Usage,usage': "the header 'emotion,pixels,Usage,usage' names the Usage column "
                                  '2 times; keep one.',
}


@pytest.mark.parametrize('header', sorted(HEADERS))
def test_a_header_that_is_not_emotion_pixels_usage_is_one_sentence(tmp_path, header):
  path = _bad_file(tmp_path, [GOOD], header=header)
  with pytest.raises(FerJaxError) as error:
    fer_csv.read_fer2013_csv(str(path))
  assert str(error.value) == f'{path}, line 1: {HEADERS[header]}'


def test_a_file_without_a_header_says_so_at_the_line_it_starts(tmp_path):
  path = tmp_path / 'bad.csv'
  path.write_text(f'\n\n{GOOD}\n')
  with pytest.raises(FerJaxError) as error:
    fer_csv.read_fer2013_csv(str(path))
  assert str(error.value) == (f"{path}, line 3 is a data row, but the file must start with the "
                              "header 'emotion,pixels,Usage'; add that header as the first line.")


@pytest.mark.parametrize('text,sentence', [
    ('', 'is empty'), ('\r\n\n  \n', 'is empty'), ('\ufeffemotion,pixels,Usage\r\n\r\n',
                                                   'has a header but no rows')])
def test_empty_files(tmp_path, text, sentence):
  path = tmp_path / 'bad.csv'
  path.write_bytes(text.encode())
  with pytest.raises(FerJaxError, match=f'bad.csv {sentence}; '):
    fer_csv.read_fer2013_csv(str(path))


def test_evaluate_names_the_line_and_exits_1_without_a_traceback(tmp_path):
  path = tmp_path / 'bad.csv'
  path.write_bytes(('\ufeffemotion,pixels,Usage\r\n' + GOOD.replace('Training', 'PrivateTest')
                    + '\r\n\r\n3,,PrivateTest\r\n').encode())
  result = subprocess.run([sys.executable, '-m', 'fer_jax.evaluate', '--pretrained', '--data',
                           str(path)], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={**os.environ, 'PYTHONPATH': str(REPO)})
  assert result.returncode == 1, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      f'error: {path}, line 4: field "pixels" is empty, but a 48x48 face needs 2304 values 0-255; '
      'fix or delete the row.')
