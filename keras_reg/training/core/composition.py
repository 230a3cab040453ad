"""Several regularisers on one model: terms add, a weight-space method wraps them."""

from keras_reg._compat import keras
from keras_reg.backend.offset import OffsetStep
from keras_reg.training.core import probability_check
from keras_reg.training.core.export import export
from keras_reg.training.core.regularizer import TrainingRegularizer

ops = keras.ops


def flatten(regularizers):
    """Returns the regularisers of a list, nested lists and compositions unpacked.

    Raises:
        TypeError: An element is not a regulariser instance.
    """
    members = []
    for value in regularizers:
        if isinstance(value, Composition):
            members.extend(value.regularizers)
        elif isinstance(value, (list, tuple)):
            members.extend(flatten(value))
        elif isinstance(value, TrainingRegularizer):
            members.append(value)
        else:
            raise TypeError(
                "Every element of a list of regularisers must be a "
                "keras_reg.TrainingRegularizer instance (e.g. "
                "`keras_reg.FGM('Embedding-Token')`); received "
                f"{value!r} ({type(value).__name__}) in {list(regularizers)!r}."
            )
    return members


def as_regularizer(value):
    """Returns ``value``, or a list of regularisers as one regulariser.

    A list of one regulariser is that regulariser; a longer one, a
    `Composition`. Anything else is returned as it is.
    """
    if not isinstance(value, (list, tuple)):
        return value
    members = flatten(value)
    if not members:
        raise ValueError(
            "Received an empty list of regularisers. Pass at least one, e.g. "
            "[keras_reg.FGM('Embedding-Token'), keras_reg.RDrop(weight=4.0)]."
        )
    return members[0] if len(members) == 1 else Composition(members)


def composed_loss(members, step):
    """Returns ``r_1 + sum_{i > 1} (r_i - L)``: the members' terms added.

    ``r_i`` is member i's ``regularized_loss(step)`` and L the step's clean
    loss (`Step.loss`); the differences are taken in float32. One member:
    ``r_1`` itself.
    """
    results = [member.regularized_loss(step) for member in members]
    first = results[0]
    if len(results) == 1:
        return first
    # The trainer's own pass: on JAX `clean_loss` may be a recomputed copy,
    # whose differentiation would add a backward pass the members do not need.
    clean = ops.cast(step.loss, "float32")
    extra = sum(ops.cast(r, "float32") - clean for r in results[1:])
    return first + ops.cast(extra, first.dtype)


class _ComposedLossStep(OffsetStep):
    """The step a weight-space method sees: its clean loss is the others' sum.

    `loss_gradients` is the gradient of the other members' composed loss C at
    w (their passes recomputed at w inside the differentiation, their logs
    dropped); ``training_loss(added=e)`` is C with every pass of the members
    at ``w + e``; `clean_loss` is C at w (a constant).
    """

    def __init__(self, step, members):
        super().__init__(step)
        self._members = members
        self._value = None

    def _composed(self, offsets, frozen=(), quiet=False):
        return composed_loss(
            self._members, OffsetStep(self._step, offsets, frozen, quiet)
        )

    def loss_gradients(self, variables, differentiable=False):
        if differentiable:
            return super().loss_gradients(variables, differentiable)

        def scaled(given):
            del given
            loss = self._composed((), quiet=True)
            return self._step.scale_loss(loss), loss

        value, gradients = self._step.value_and_gradient(scaled, list(variables))
        self._value = ops.stop_gradient(value)
        return gradients

    def clean_loss(self):
        if self._value is None:
            self._value = ops.stop_gradient(self._composed((), quiet=True))
        return self._value

    def training_loss(self, added=(), frozen=(), **options):
        if any(options.get(k) is not None for k in ("x", "layer", "transform")) or (
            options.get("with_output")
        ):
            raise ValueError(
                "A weight-space method inside a composition may only move the "
                "weights (training_loss(added=...)): the other regularisers' "
                f"loss has no single output or transformed layer; received {options}."
            )
        return self._composed(added, frozen)


@export()
class Composition(TrainingRegularizer):
    """Several regularisers trained together on one model.

    Each member's ``regularized_loss`` is a loss built around the step's clean
    loss L (FGM without its clean term: L(E + delta); a penalty: L + term;
    R-Drop: (L1 + L2) / 2 + KL). The composition optimizes their terms added:

        composed = L + sum_i (r_i - L) = r_1 + sum_{i > 1} (r_i - L)

    so FGM + a gradient penalty is L(E + delta) + weight * ||g||^2, and FGM +
    R-Drop on a model without dropout is FGM exactly. A list of one
    regulariser is that regulariser; nested compositions are flattened.

    Shared work is done once: the members see one step, with one clean pass
    and its gradients (taken once per variable where the backend records the
    pass: TensorFlow's tape; PyTorch's graph); the watched variables, layers,
    inputs, logged terms and carried state of the composition are the union
    of its members'. Two members logging the same term, or carrying state of
    the same name, are refused.

    A weight-space method (`keras_reg.SAM`, `keras_reg.AWP`; at most one)
    wraps the others' composed loss C: its ascent direction e(w) comes from
    dC/dw at w, and the loss optimized is C with every pass of the other
    members -- their clean pass and clean gradient included -- at w + e(w)
    (the weights themselves never hold w + e). Members that need the
    trainer's own pass (gradients w.r.t. a layer's outputs or the inputs,
    an inference pass, differentiable gradients) or carry state cannot run
    under it and are refused. At most one multi-task balancer
    (`keras_reg.LossBalancing`).

    ``on_epoch_begin`` reaches every member (AWP's warm-up).

    Args:
        regularizers: A list of `keras_reg.TrainingRegularizer` instances
            (or of compositions, flattened).

    Example:
        >>> keras_reg.install_regularizer(
        ...     model, [keras_reg.FGM("Embedding-Token"), keras_reg.RDrop(weight=4)])
        >>> model.fit(x, y)
        >>> keras_reg.compose(keras_reg.SAM(rho=0.05), keras_reg.FGM("emb"))

    References:
        Foret et al. Sharpness-Aware Minimization for Efficiently Improving
        Generalization. ICLR 2021 (SAM). Liang et al. R-Drop: Regularized
        Dropout for Neural Networks. NeurIPS 2021.
    """

    def __init__(self, regularizers):
        if isinstance(regularizers, TrainingRegularizer) or not isinstance(
            regularizers, (list, tuple)
        ):
            raise TypeError(
                "Composition expects a list of regularisers, received "
                f"regularizers={regularizers!r}. Pass e.g. "
                "Composition([keras_reg.FGM('emb'), keras_reg.RDrop()])."
            )
        self.regularizers = flatten(regularizers)
        if not self.regularizers:
            raise ValueError(
                "Composition needs at least one regulariser, received regularizers=[]."
            )
        self._check_roles()
        self._check_names(
            "logged term", [(m, m.logged_terms()) for m in self.regularizers]
        )

    # ---- roles and names -----------------------------------------------------------
    def _wrapper(self):
        spaces = [m for m in self.regularizers if m.weight_space]
        return spaces[0] if spaces else None

    def _others(self):
        wrapper = self._wrapper()
        return [m for m in self.regularizers if m is not wrapper]

    def _check_roles(self):
        for role, what, fix in (
            ("weight_space", "weight-space methods", "one of them"),
            ("balances_tasks", "multi-task balancers", "one balancing method"),
        ):
            found = [m for m in self.regularizers if getattr(m, role)]
            if len(found) > 1:
                raise ValueError(
                    f"A composition may hold at most one of the {what}; received "
                    f"{found[0]!r} and {found[1]!r}. Keep {fix}."
                )
        wrapper = self._wrapper()
        balancer = [m for m in self.regularizers if m.balances_tasks]
        if wrapper is not None and balancer:
            raise ValueError(
                f"{wrapper!r} cannot wrap the multi-task balancer {balancer[0]!r}: "
                "the balanced loss is built from the trainer's own pass. Train "
                "them in separate fits, or drop one."
            )

    def _check_names(self, what, named):
        seen = {}
        for member, names in named:
            for name in names:
                if name in seen:
                    raise ValueError(
                        f"{seen[name]!r} and {member!r} both have the {what} "
                        f"{name!r}: a composition keeps one of each name. Compose "
                        "regularisers whose logged terms and carried state differ "
                        "(e.g. not two adversaries of one kind)."
                    )
                seen[name] = member

    def _check_wrappable(self, model):
        wrapper = self._wrapper()
        if wrapper is None:
            return
        for member in self._others():
            needs = []
            if member.watched_outputs(model):
                needs.append("gradients w.r.t. a layer's outputs")
            if member.watches_inputs(model):
                needs.append("gradients w.r.t. the inputs")
            carried = member.carried_state(model)
            if any(not probability_check.is_record(name) for name in carried):
                needs.append("state carried between steps")
            if needs:
                raise ValueError(
                    f"{wrapper!r} cannot wrap {member!r}: it needs "
                    f"{' and '.join(needs)} of the trainer's own pass, and the "
                    f"weight-space method runs every pass of the others at w + e. "
                    f"Compose {member!r} without {type(wrapper).__name__}."
                )

    # ---- the protocol: unions of the members' ---------------------------------------
    def validate(self, model):
        for member in self.regularizers:
            member.validate(model)
        self._check_names(
            "carried state", [(m, m.carried_state(model)) for m in self.regularizers]
        )
        self._check_wrappable(model)

    def logged_terms(self):
        return tuple(n for m in self.regularizers for n in m.logged_terms())

    def carried_state(self, model):
        state = {}
        for member in self.regularizers:
            state.update(member.carried_state(model))
        return state

    def check_states(self, model, states, warned):
        for member in self.regularizers:
            member.check_states(model, states, warned)

    def watched_variables(self, model):
        return _unique(v for m in self.regularizers for v in m.watched_variables(model))

    def watched_outputs(self, model):
        return _unique(x for m in self.regularizers for x in m.watched_outputs(model))

    def required_layers(self, model):
        pairs = {}
        for member in self.regularizers:
            for layer, lookup in member.required_layers(model):
                previous = pairs.get(id(layer), (layer, False))
                pairs[id(layer)] = (layer, previous[1] or lookup)
        return list(pairs.values())

    def row_lookups(self, model):
        return _unique(x for m in self.regularizers for x in m.row_lookups(model))

    def watches_inputs(self, model):
        return any(m.watches_inputs(model) for m in self.regularizers)

    def on_epoch_begin(self, epoch):
        changed = [m.on_epoch_begin(epoch) for m in self.regularizers]
        return any(changed)

    def regularized_loss(self, step):
        wrapper = self._wrapper()
        if wrapper is None:
            return composed_loss(self.regularizers, step)
        others = self._others()
        if not others:
            return wrapper.regularized_loss(step)
        return wrapper.regularized_loss(_ComposedLossStep(step, others))

    # ---- serialisation ------------------------------------------------------------
    def get_config(self):
        return {
            "regularizers": [
                keras.saving.serialize_keras_object(m) for m in self.regularizers
            ]
        }

    @classmethod
    def from_config(cls, config):
        return cls(
            [keras.saving.deserialize_keras_object(m) for m in config["regularizers"]]
        )

    def __repr__(self):
        return f"Composition([{', '.join(repr(m) for m in self.regularizers)}])"


def _unique(values):
    found = {}
    for value in values:
        found.setdefault(id(value), value)
    return list(found.values())


@export()
def compose(*regularizers):
    """Returns the regularisers as one: a `Composition` (see its semantics).

    Args:
        *regularizers: `keras_reg.TrainingRegularizer` instances, lists of
            them, or compositions (flattened).

    Returns:
        A `Composition`, or the regulariser itself when there is one.

    Example:
        >>> both = keras_reg.compose(keras_reg.FGM("Embedding-Token"),
        ...                          keras_reg.RDrop(weight=4.0))
        >>> keras_reg.install_regularizer(model, both)
    """
    return as_regularizer(list(regularizers))
