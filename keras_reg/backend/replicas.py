"""The global batch, for code that runs outside a `Step` (losses).

Under ``tf.distribute`` Keras computes each replica's loss on its shard of the
global batch, then divides it by the number of replicas and sums the
replicas' gradients. A loss that is not linear in the batch mean (flooding:
``|L - b| + b``) needs the global mean. JAX under ``keras.distribution``
computes on global arrays, and PyTorch runs one replica: nothing to do there.
"""

import sys


def _replica_context():
    """The TensorFlow replica context of a strategy with several replicas, or None."""
    tf = sys.modules.get("tensorflow")
    if tf is None:
        return None
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return context


def global_sum(value):
    """Returns ``(sum of value over the replicas, replicas)``, or None on one replica.

    The sum is a constant (not differentiated): use it for decisions and
    values, and differentiate the replica's own ``value``. A Keras 3 loss's
    value on a replica is already its shard's share (divided by the
    replicas), so the sum of the shares is the global batch loss.

    Args:
        value: A scalar tensor, e.g. a replica's share of the batch loss.
    """
    context = _replica_context()
    if context is None:
        return None
    tf = sys.modules["tensorflow"]
    total = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.stop_gradient(value))
    return total, context.num_replicas_in_sync
