"""R-Drop: two dropout passes of each batch, pulled together by a symmetric KL.

Reference:
    Liang, Wu, Li, Wang, Meng, Qin, Chen, Zhang, Liu. R-Drop: Regularized
    Dropout for Neural Networks. NeurIPS 2021. https://arxiv.org/abs/2106.14448

    Su Jianlin. 又是Dropout两次！这次它做到了有监督任务的SOTA (R-Drop in
    bert4keras: ``crossentropy_with_rdrop``). https://kexue.fm/archives/8496
"""

from keras_reg._compat import keras
from keras_reg.training.core import probability_check, schedule
from keras_reg.training.core.divergence import KINDS, output_kind, symmetric_kl
from keras_reg.training.core.export import export
from keras_reg.training.core.regularizer import TrainingRegularizer
from keras_reg.validation import choice, require_loss

ops = keras.ops


@export("r_drop", renamed={"alpha": "weight"})
class RDrop(TrainingRegularizer):
    """R-Drop (Liang et al. 2021): consistency between two dropout masks.

    The step's own training pass gives P1 (and the clean loss L1, and the
    metrics); one more training pass of the same batch, with an independent
    dropout mask, gives P2 and L2. The step optimizes

        (L1 + L2) / 2 + (weight / 4) * mean_i [KL(P1_i || P2_i) + KL(P2_i || P1_i)]

    which is half the paper's per-example objective L_NLL(P1) + L_NLL(P2) +
    alpha * (KL(P1||P2) + KL(P2||P1)) / 2, so the paper's alpha carries over
    as ``weight``; bert4keras's ``crossentropy_with_rdrop`` is the same loss
    (weight = 4 there).
    Gradients flow through both passes. The KL is the plain batch mean (sample
    weights weight L1 and L2 only). ``rdrop_kl`` in the logs is the symmetric
    KL, mean_i [KL(P1||P2) + KL(P2||P1)].

    The outputs are read as probabilities for a softmax or sigmoid output
    (a loss without ``from_logits``), as logits with ``from_logits=True``
    (softmax, or one sigmoid unit for a last axis of size 1); ``predictions``
    overrides the inference. A model without dropout gets L1 = L2 and a KL of
    0: exactly the plain step.

    Args:
        weight: Weight of the KL term, the paper's alpha (paper: 0.3 to 5 by
            task; bert4keras 4), or a schedule of the step (see
            `keras_reg.training.core.schedule`). ``alpha=`` is a deprecated
            alias (removed in 0.3).
        predictions: None (infer from the compiled loss), ``"probabilities"``
            or ``"logits"``.

    Example:
        >>> model.compile(loss="sparse_categorical_crossentropy", optimizer="adam")
        >>> keras_reg.r_drop(model, weight=4.0)
        >>> model.fit(x, y)          # each batch once: no duplication needed
    """

    def __init__(self, weight=4.0, predictions=None):
        self.weight = schedule.strength("weight", weight, example=4.0)
        if predictions is not None:
            choice("predictions", predictions, KINDS)
        self.predictions = predictions

    def validate(self, model):
        require_loss("RDrop", model)
        output_kind(model, self.predictions, who="RDrop")

    def logged_terms(self):
        return ("rdrop_kl",)

    def carried_state(self, model):
        kind = output_kind(model, self.predictions, warn=False, who="RDrop")
        return probability_check.carried_state(kind, "RDrop")

    def check_states(self, model, states, warned):
        probability_check.warn_once(
            warned, states, "RDrop", model.name, self.predictions
        )

    def regularized_loss(self, step):
        kind = output_kind(step.model, self.predictions, warn=False, who="RDrop")
        y_pred, loss = step.training_loss(with_output=True)
        if kind == "probabilities":
            probability_check.record(step, step.y_pred, "RDrop")
        # The KL is a mean over the global batch; each replica adds its share
        # (the framework sums the replicas' gradients).
        symmetric = step.global_mean(symmetric_kl(step.y_pred, y_pred, kind))
        step.log("rdrop_kl", symmetric)
        mean = (step.loss + ops.cast(loss, step.loss.dtype)) * 0.5
        weight = schedule.current(step, self.weight)
        term = symmetric * (weight / 4.0) / step.replicas()
        return mean + ops.cast(term, mean.dtype)

    def get_config(self):
        return {
            "weight": schedule.serialize(self.weight),
            "predictions": self.predictions,
        }
