"""A clear error where TensorFlow's collectives of two strategies clash.

TensorFlow numbers the collective operations of every new
``tf.distribute.MirroredStrategy`` from the same keys (group 1, instance 100,
...) and remembers each key's operation for the whole process. A second
strategy whose collectives differ from the first one's in kind, dtype or
shape fails at its first step with "Collective instance 100 expected type 0
and data_type 1 but got type 2 and data_type 3" (or "Shape mismatch in the
collective instance 100"). Plain Keras meets it as well when the second
strategy trains another model; a regulariser meets it sooner, since its
step adds collectives of its own (the strategy's ``all_reduce`` and
``all_gather``: the library has no keys of its own to move). The keys are
TensorFlow's, so the fix is the user's: `guarded` turns the error into one
that says so.
"""

import functools

_MARKERS = ("Collective instance", "collective instance")
_KINDS = ("expected type", "Shape mismatch", "expected shape")

MESSAGE = (
    "TensorFlow's collective operations of two tf.distribute strategies "
    "clashed in this process ({detail}). Every new MirroredStrategy numbers "
    "its collectives from the same keys, and TensorFlow remembers each key's "
    "operation for the whole process: a second strategy that trains a "
    "different step (another model, or the same model with a regulariser) "
    "fails at its first step. This is a TensorFlow limitation, not a problem "
    "of model {model!r}. Fixes: create the strategy once and reuse it for "
    "every model in the process; or run each training in its own process "
    "(restart the notebook kernel); or create the strategy with "
    "cross_device_ops=tf.distribute.ReductionToOneDevice(), which reduces "
    "without collective operations."
)


def is_clash(error):
    """Whether ``error`` is TensorFlow's collective-key clash."""
    text = str(error)
    return any(m in text for m in _MARKERS) and any(k in text for k in _KINDS)


def _detail(error):
    text = " ".join(str(error).split())
    start = max(text.find("Collective instance"), text.find("collective instance"))
    return text[max(start, 0) :][:160].rstrip(" .;:")


def guarded(function, model):
    """Returns ``function`` (a train function) raising `MESSAGE` on a clash.

    Args:
        function: The model's train function.
        model: The model it trains (named in the message).
    """
    if getattr(function, "keras_reg_guarded", False):
        return function

    @functools.wraps(function)
    def train_function(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except Exception as error:
            if not is_clash(error):
                raise
            raise RuntimeError(
                MESSAGE.format(detail=_detail(error), model=model.name)
            ) from error

    train_function.keras_reg_guarded = True
    return train_function


def several_replicas(model):
    """Whether ``model`` trains under a strategy with several replicas."""
    strategy = getattr(model, "distribute_strategy", None)
    return getattr(strategy, "num_replicas_in_sync", 1) > 1
