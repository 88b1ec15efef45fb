"""Files taken from a shared checkpoint folder cannot run code: every file the trainer and the
scorer read is parsed as data, a pickle in its place is refused with one line naming it, and the
product code holds no unpickling, eval or exec outside the one marked conversion command."""
import os
import pickle
import re
import shutil
import subprocess
import sys

import pytest

from train_helpers import ROOT, env, run_train, tiny_args, tiny_data

SCORE = os.path.join(ROOT, 'score.py')


class _Payload(object):
    """Unpickling this runs ``touch MARKER``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, ('touch %s' % self.marker,))


def _poison(path, marker):
    with open(path, 'wb') as f:
        pickle.dump({'format': 'crunet-mxnet/optimizer-states/1', 'x': _Payload(marker)}, f, protocol=4)


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    """A one-epoch run of a tiny CRU-Net-22 (checkpoint epoch 1), copied afresh for every test."""
    base = tmp_path_factory.mktemp('untrusted')
    data = tiny_data(base, num_train=16, num_val=8)
    run_train(tiny_args(data, base / 'run' / 'net', epochs=1, batch=8), check=True)
    return base, data


@pytest.fixture
def fresh(run_dir, tmp_path):
    base, data = run_dir
    shutil.copytree(str(base / 'run'), str(tmp_path / 'run'))
    return str(tmp_path / 'run' / 'net'), data, str(tmp_path / 'MARKER')


def _one_error(proc, needle):
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith('error: ')]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert len(errors) == 1 and errors[0] == lines[-1] and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    assert needle in errors[0], (needle, errors[0])
    return errors[0]


def _train(prefix, data, *extra):
    return run_train(tiny_args(data, prefix, epochs=2, batch=8, extra=list(extra)))


def _score(prefix, data):
    return subprocess.run([sys.executable, SCORE, '--model', prefix, '--epoch', '1', '--data-val', data['val']],
                          capture_output=True, text=True, env=env(), timeout=240)


@pytest.mark.parametrize('how', [['--resume'], ['--load-epoch', '1']])
def test_old_pickle_states_are_refused_unread(fresh, how):
    prefix, data, marker = fresh
    path = prefix + '-0001.states'
    _poison(path, marker)
    line = _one_error(_train(prefix, data, *how), path)
    assert 'pickle' in line and 'convert-states' in line
    assert not os.path.exists(marker)


def test_states_file_of_another_format_is_refused(fresh):
    prefix, data, marker = fresh
    import numpy as np
    path = prefix + '-0001.states'
    with open(path, 'wb') as f:                       # an npz holding an object array
        np.savez(f, x=np.array([_Payload(marker)], dtype=object))
    _one_error(_train(prefix, data, '--resume'), path)
    assert not os.path.exists(marker)


@pytest.mark.parametrize('how', [['--resume'], ['--load-epoch', '1']])
def test_pickle_in_place_of_params_is_refused(fresh, how):
    prefix, data, marker = fresh
    _poison(prefix + '-0001.params', marker)
    _one_error(_train(prefix, data, *how), prefix + '-0001.params')
    assert not os.path.exists(marker)


@pytest.mark.parametrize('name', ['-0001.params', '-symbol.json'])
def test_finetune_from_pickled_files_is_refused(fresh, tmp_path, name):
    prefix, data, marker = fresh
    _poison(prefix + name, marker)
    proc = run_train(tiny_args(data, tmp_path / 'ft' / 'net', epochs=1, batch=8,
                               extra=['--finetune-from', prefix, '--finetune-epoch', '1']))
    _one_error(proc, prefix + name)
    assert not os.path.exists(marker)


@pytest.mark.parametrize('name', ['-0001.params', '-symbol.json', '-args.json'])
def test_score_of_pickled_files_is_refused(fresh, name):
    prefix, data, marker = fresh
    _poison(prefix + name, marker)
    _one_error(_score(prefix, data), prefix + name)
    assert not os.path.exists(marker)


def test_convert_states_needs_trust_and_then_resumes(fresh):
    """The conversion command reads a pickle only with --trust-pickle; the converted file resumes."""
    prefix, data, marker = fresh
    path = prefix + '-0001.states'
    import numpy as np
    from crunet.train.state import read_states
    meta, states = read_states(path)
    old = dict(format='crunet-mxnet/optimizer-states/1', epoch=1, optimizer=meta['optimizer'],
               optimizer_states={k: v.asnumpy() for k, v in states.items()},
               update_counts=meta['update_counts'], schedule=meta['schedule'])
    with open(path, 'wb') as f:
        pickle.dump(old, f, protocol=4)
    cmd = [sys.executable, os.path.join(ROOT, 'train_imagenet.py'), 'convert-states', path]
    refused = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=120)
    _one_error(refused, '--trust-pickle')
    done = subprocess.run(cmd + ['--trust-pickle'], capture_output=True, text=True, env=env(), timeout=120)
    assert done.returncode == 0, done.stderr
    meta2, states2 = read_states(path)
    assert meta2['update_counts'] == meta['update_counts'] and sorted(states2) == sorted(states)
    for name in states:
        assert np.array_equal(states2[name].asnumpy(), states[name].asnumpy()), name
    proc = _train(prefix, data, '--resume')
    assert proc.returncode == 0 and 'Restored optimizer states' in proc.stderr, proc.stderr[-3000:]


#: calls that run code from what they read; the one allowed place carries this comment
_DANGEROUS = re.compile(r'pickle\.loads?\(|cPickle|allow_pickle\s*=\s*True|yaml\.load\((?![^)]*SafeLoader)'
                        r'|yaml\.unsafe_load|(?<![\w.])eval\(|(?<![\w.])exec\(|marshal\.loads?\(|shelve\.open\(')
_ALLOWED = '# trusted-pickle: the user vouched for this file with --trust-pickle'


def test_product_code_cannot_run_code_from_files():
    found = []
    for top in ('crunet', 'symbols', 'bench', 'tools', 'data', 'train_imagenet.py', 'score.py', 'setup.py'):
        path = os.path.join(ROOT, top)
        files = [path] if path.endswith('.py') else [
            os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs if f.endswith(('.py', '.sh'))]
        for fname in files:
            with open(fname, encoding='utf-8') as f:
                for no, line in enumerate(f, 1):
                    if _DANGEROUS.search(line) and _ALLOWED not in line:
                        found.append('%s:%d: %s' % (os.path.relpath(fname, ROOT), no, line.strip()))
    assert not found, '\n'.join(found)
    marked = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(ROOT, 'crunet')) for f in fs
              if f.endswith('.py') and _ALLOWED in open(os.path.join(d, f), encoding='utf-8').read()]
    assert [os.path.relpath(p, ROOT) for p in marked] == [os.path.join('crunet', 'train', 'convert.py')]
