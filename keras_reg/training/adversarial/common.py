"""Helpers the embedding adversaries (FGM, PGD, FreeLB, FreeFGM) share."""

from keras_reg._compat import keras
from keras_reg.training.core.embedding import find_embedding_layer
from keras_reg.validation import require_loss

ops = keras.ops


def embedding_name_argument(embedding_name):
    """Returns ``embedding_name`` after checking it is a non-empty string."""
    if not isinstance(embedding_name, str) or not embedding_name:
        raise ValueError(
            "`embedding_name` must be the name of an embedding layer, received "
            f"embedding_name={embedding_name!r}."
        )
    return embedding_name


def check_embedding_and_loss(regularizer, model):
    """Checks that ``model`` has the embedding layer and a compiled loss."""
    find_embedding_layer(model, regularizer.embedding_name)
    require_loss(type(regularizer).__name__, model)


def clean_term_variables(model, matrix):
    """The variables the clean term is differentiated with respect to."""
    variables = list(model.trainable_variables)
    if all(v is not matrix for v in variables):
        variables.append(matrix)
    return variables


def clean_gradient(step, layer, matrix, add_clean_loss):
    """Returns the clean gradient dL/dE (global) and the clean term, or None.

    With ``add_clean_loss`` every clean gradient is taken in one backward
    pass (`Step.matrix_loss_gradients`) and the clean term is `Step.linear_loss` of
    them: the step's own backward pass then does not go through the clean pass
    again (one backward pass through each of L(E) and L(E + delta), not the
    pass to E for the direction and then the trainer's full backward pass of
    the clean loss). Otherwise only dL/dE is taken (of the scaled loss: the
    direction is invariant to the loss scale), as rows where the backend
    takes it so (`Step.matrix_gradient`).
    """
    if not add_clean_loss:
        return step.matrix_gradient(layer, matrix), None
    variables = clean_term_variables(step.model, matrix)
    taken = step.matrix_loss_gradients(layer, matrix, variables)
    gradients = [step.unscaled(g) for g in taken]
    # The clean loss of the pass differentiated (JAX: the recomputed one).
    loss = ops.stop_gradient(step.clean_loss())
    index = next(i for i, v in enumerate(variables) if v is matrix)
    direction = step.global_sum(gradients[index])
    return direction, step.linear_loss(loss, variables, gradients)


def with_clean_term(clean, adversarial):
    """``clean + adversarial`` (in the adversarial loss's dtype), or ``adversarial``."""
    if clean is None:
        return adversarial
    return ops.cast(clean, adversarial.dtype) + adversarial
