"""Learning-rate policies as pure functions of the (fractional) epoch, plus the plateau state.

The learning rate of a batch is computed from ``epoch + batch / batches_per_epoch``, never from a
counter hidden in the optimizer, so a run resumed at epoch N uses exactly the rates of a run that
never stopped. The only state is the plateau policy's (best score, epochs without improvement,
decays so far); it is saved with every checkpoint (:meth:`LRSchedule.state_dict`).

Policies:

- ``step``: ``lr * factor**k`` after the k-th epoch of ``step_epochs`` (MXNet's
  ``--lr-step-epochs 30,60``).
- ``plateau`` (the paper's): ``lr * factor`` each time the monitored score (validation top-1)
  has not improved by more than ``min_delta`` for ``patience`` epochs.
- ``cosine``: half a cosine from ``lr`` down to ``min_lr`` at ``num_epochs``.
- ``constant``.

Every policy may start with ``warmup_epochs`` of linear warmup from ``warmup_lr``.
"""
import math

POLICIES = ('step', 'plateau', 'cosine', 'constant')


class LRSchedule(object):
    def __init__(self, base_lr, policy='step', step_epochs=(), factor=0.1, num_epochs=None,
                 warmup_epochs=0.0, warmup_lr=0.0, min_lr=0.0, patience=5, min_delta=0.0):
        if policy not in POLICIES:
            raise ValueError('unknown lr policy %r; valid choices: %s' % (policy, ', '.join(POLICIES)))
        if policy == 'cosine' and not num_epochs:
            raise ValueError('the cosine policy needs num_epochs')
        self.base_lr = float(base_lr)
        self.policy = policy
        self.step_epochs = sorted(float(e) for e in step_epochs)
        self.factor = float(factor)
        self.num_epochs = num_epochs
        self.warmup_epochs = float(warmup_epochs or 0)
        self.warmup_lr = float(warmup_lr)
        self.min_lr = float(min_lr)
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        # plateau state
        self.scale = 1.0
        self.best = None
        self.bad_epochs = 0
        self.num_decays = 0

    # ---------------------------------------------------------------- rates
    def _after_warmup(self, t):
        if self.policy == 'step':
            k = sum(1 for s in self.step_epochs if t >= s)
            return self.base_lr * self.factor ** k
        if self.policy == 'plateau':
            return max(self.base_lr * self.scale, self.min_lr)
        if self.policy == 'cosine':
            span = max(float(self.num_epochs) - self.warmup_epochs, 1e-12)
            frac = min(max((t - self.warmup_epochs) / span, 0.0), 1.0)
            return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * frac))
        return self.base_lr

    def lr(self, t):
        """Learning rate at fractional epoch ``t`` (epoch index + fraction of it done)."""
        t = float(t)
        if t < self.warmup_epochs:
            target = self._after_warmup(self.warmup_epochs)
            return self.warmup_lr + (target - self.warmup_lr) * t / self.warmup_epochs
        return self._after_warmup(t)

    __call__ = lr

    # ---------------------------------------------------------------- plateau
    def end_epoch(self, score):
        """Report the epoch's monitored score (higher is better); returns True when the plateau
        policy just divided the rate. Other policies only record the best score."""
        if score is None or score != score:
            return False
        if self.best is None or score > self.best + self.min_delta:
            self.best = float(score)
            self.bad_epochs = 0
            return False
        self.bad_epochs += 1
        if self.policy == 'plateau' and self.bad_epochs >= self.patience:
            self.scale *= self.factor
            self.num_decays += 1
            self.bad_epochs = 0
            return True
        return False

    def state_dict(self):
        return dict(scale=self.scale, best=self.best, bad_epochs=self.bad_epochs,
                    num_decays=self.num_decays)

    def load_state_dict(self, state):
        self.scale = float(state.get('scale', 1.0))
        self.best = state.get('best')
        self.bad_epochs = int(state.get('bad_epochs', 0))
        self.num_decays = int(state.get('num_decays', 0))

    def describe(self):
        text = '%s, base lr %g' % (self.policy, self.base_lr)
        if self.policy == 'step':
            text += ', x%g at epochs %s' % (self.factor, ','.join('%g' % e for e in self.step_epochs) or 'none')
        elif self.policy == 'plateau':
            text += ', x%g after %d epochs without validation gain' % (self.factor, self.patience)
        elif self.policy == 'cosine':
            text += ' -> %g at epoch %s' % (self.min_lr, self.num_epochs)
        if self.warmup_epochs:
            text += ', linear warmup from %g over %g epochs' % (self.warmup_lr, self.warmup_epochs)
        return text


class NumUpdateScheduler(object):
    """An MXNet-style ``lr_scheduler`` (``scheduler(num_update) -> lr``) over an
    :class:`LRSchedule`, for optimizers that live on the parameter servers (``dist_async``): the
    rate follows the servers' update count, one epoch being ``updates_per_epoch`` updates.
    Plateau decays cannot reach the servers. (No mxnet import here: servers unpickle this class
    while ``import mxnet`` is still running.)"""

    def __init__(self, schedule, updates_per_epoch, begin_epoch=0):
        self.schedule = schedule
        self.base_lr = schedule.base_lr
        self.updates_per_epoch = max(int(updates_per_epoch), 1)
        self.begin_epoch = begin_epoch

    def __call__(self, num_update):
        return self.schedule.lr(self.begin_epoch + float(num_update) / self.updates_per_epoch)
