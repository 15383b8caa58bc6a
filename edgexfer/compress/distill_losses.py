"""The distillation losses and the Keras model whose ``fit`` trains a student on them.

Soft targets (Hinton et al., 2015): ``alpha · T² · KL(softmax(t/T) ‖ softmax(s/T))`` plus
``(1 − alpha) · CE(y, s)`` on the labelled images.

Knowledge Adjustment (``correct_teacher``), after Wen, Lai & Qian (2021, "Preparing Lessons:
Improve Knowledge Distillation with Better Supervision", Neurocomputing): on a labelled image the
teacher gets wrong, its logits of the predicted and of the true class are swapped, so the soft
target agrees with the label and keeps the rest of the teacher's distribution. It matters when
the teacher was adapted away from the labelled domain (after SHOT the demo's teacher missed 4–15 %
of the source images) and would teach the student those mistakes.

Feature hint (``feature_weight`` β > 0), after FitNets (Romero et al., 2015, "FitNets: Hints
for Thin Deep Nets", whose hint is an intermediate layer of the teacher that a regressor on
the student's layer learns to match): here the hint is the pooled embedding — the input of
the classifier Dense — because teacher and student differ in input size and so in spatial
size, and pooled vectors need no spatial alignment. A linear projection (Dense, no
activation) maps the student's embedding to the teacher's width; it is trained with the
student and is not part of the saved student. The term is
``β · mean_batch ‖normalize(proj(s)) − normalize(t)‖²`` (= ``β · mean(2 − 2 cos)``), with
L2-normalised vectors: its scale (0 … 4 per image) depends neither on the feature
magnitudes nor on the widths, so one β means the same for every teacher and student.
"""

from __future__ import annotations

from edgexfer.seeding import derive_seed


def student_embedding(head_layers):
    """The student's pooled embedding: the tensor its head Dense reads at inference, taken
    before the head's dropout (dropout is off in the teacher, whose embedding it matches)."""
    from edgexfer.tf_env import import_tf

    _, keras = import_tf()
    *before, dense = head_layers
    if before and isinstance(before[-1], keras.layers.Dropout):
        return before[-1].input
    return dense.input


def feature_projection(student_width: int, teacher_width: int, seed: int):
    """The trainable linear map of the student's embedding onto the teacher's width (seeded)."""
    from edgexfer.tf_env import import_tf

    _, keras = import_tf()
    projection = keras.layers.Dense(
        teacher_width,
        activation=None,
        kernel_initializer=keras.initializers.GlorotUniform(seed=derive_seed(seed, "distill", "feature_projection")),
        name="feature_projection",
    )
    projection.build((None, student_width))
    return projection


def feature_hint_loss(projected, teacher_features):
    """Mean over the batch of ``‖normalize(projected) − normalize(teacher_features)‖²``."""
    from edgexfer.tf_env import import_tf

    tf, _ = import_tf()
    student = tf.math.l2_normalize(projected, axis=-1)
    teacher = tf.math.l2_normalize(tf.cast(teacher_features, projected.dtype), axis=-1)
    return tf.reduce_mean(tf.reduce_sum(tf.square(student - teacher), axis=-1))


def knowledge_adjustment(teacher_logits, labels):
    """``teacher_logits`` with, on each labelled image (label ≥ 0) whose argmax is not its label,
    the logits of the predicted class and of the label swapped; unlabelled images (label −1) and
    images the teacher gets right are unchanged."""
    from edgexfer.tf_env import import_tf

    tf, _ = import_tf()
    logits = tf.convert_to_tensor(teacher_logits)
    labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
    classes = tf.shape(logits)[-1]
    predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
    truth = tf.maximum(labels, 0)
    wrong = tf.logical_and(labels >= 0, tf.not_equal(predicted, truth))
    to_truth = tf.one_hot(truth, classes, dtype=logits.dtype)
    to_predicted = tf.one_hot(predicted, classes, dtype=logits.dtype)
    gap = tf.reduce_sum(logits * to_predicted, axis=-1, keepdims=True) - tf.reduce_sum(
        logits * to_truth, axis=-1, keepdims=True
    )
    return tf.where(wrong[:, None], logits + gap * (to_truth - to_predicted), logits)


def distiller(
    student,
    head_layers,
    teacher,
    temperature: float,
    alpha: float,
    online: bool,
    feature_weight: float = 0.0,
    teacher_width: int | None = None,
    seed: int = 0,
    correct_teacher: bool = False,
):
    """A Keras model whose ``fit`` trains ``student`` on the distillation loss.

    Its training data is ``((x, extra), y)``: ``extra`` is the teacher's input when
    ``online`` (``teacher`` maps it to logits, or to ``(logits, features)`` with the hint on),
    else the cached logits, or ``(logits, features)``. ``feature_weight`` 0 leaves the hint
    out entirely (no projection, no teacher features). ``correct_teacher`` applies
    :func:`knowledge_adjustment` to the teacher's logits of every batch.
    """
    from edgexfer.tf_env import import_tf

    tf, keras = import_tf()
    dense = head_layers[-1]
    hinted = feature_weight > 0
    needs_teacher = alpha > 0 or hinted

    class Distiller(keras.Model):
        def __init__(self):
            super().__init__(name="distiller")
            self.student = student
            if hinted:
                embedding = student_embedding(head_layers)
                self.features = keras.Model(student.input, [dense.input, embedding])
            else:
                self.features = keras.Model(student.input, dense.input)
            self.dense = dense
            self.teacher = teacher
            self.loss_tracker = keras.metrics.Mean(name="loss")
            self.soft_tracker = keras.metrics.Mean(name="soft_loss")
            self.hard_tracker = keras.metrics.Mean(name="hard_loss")
            self.accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
            if hinted:
                self.projection = feature_projection(int(embedding.shape[-1]), int(teacher_width), seed)
                self.feature_tracker = keras.metrics.Mean(name="feature_loss")

        @property
        def metrics(self):
            trackers = [self.loss_tracker, self.soft_tracker, self.hard_tracker, self.accuracy]
            return [*trackers, self.feature_tracker] if hinted else trackers

        def call(self, inputs, training=False):
            return self.student(inputs, training=training)

        def train_step(self, data):
            (x, extra), y = data
            teacher_logits = teacher_features = None
            if needs_teacher:
                targets = self.teacher(extra, training=False) if online else extra
                teacher_logits, teacher_features = targets if hinted else (targets, None)
                if correct_teacher:
                    teacher_logits = knowledge_adjustment(teacher_logits, y)
            with tf.GradientTape() as tape:
                if hinted:
                    features, embedding = self.features(x, training=True)
                else:
                    features = self.features(x, training=True)
                logits = tf.matmul(features, self.dense.kernel)
                if self.dense.use_bias:
                    logits = logits + self.dense.bias
                # Unlabelled images (label -1) carry only the soft loss: mask them out of the hard loss.
                labelled = tf.cast(y >= 0, logits.dtype)
                per_image = keras.losses.sparse_categorical_crossentropy(tf.maximum(y, 0), logits, from_logits=True)
                hard = tf.reduce_sum(per_image * labelled) / tf.maximum(tf.reduce_sum(labelled), 1.0)
                if alpha > 0:
                    t_log = tf.nn.log_softmax(tf.cast(teacher_logits, logits.dtype) / temperature)
                    s_log = tf.nn.log_softmax(logits / temperature)
                    soft = tf.reduce_mean(tf.reduce_sum(tf.exp(t_log) * (t_log - s_log), axis=-1))
                    soft = soft * (temperature**2)
                else:
                    soft = tf.constant(0.0)
                loss = alpha * soft + (1.0 - alpha) * hard
                if hinted:  # every image, unlabelled ones too: the hint needs no label
                    hint = feature_hint_loss(self.projection(embedding), teacher_features)
                    loss = loss + feature_weight * hint
                if self.student.losses:
                    loss = loss + tf.add_n(self.student.losses)
                # Replicas' gradients are summed: scale each replica's loss so the sum is the global mean.
                replicas = tf.distribute.get_strategy().num_replicas_in_sync
                scaled = loss / replicas if replicas > 1 else loss
            variables = self.student.trainable_variables
            if hinted:
                variables = variables + self.projection.trainable_variables
            self.optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
            self.loss_tracker.update_state(loss)
            self.soft_tracker.update_state(soft)
            self.hard_tracker.update_state(hard)
            if hinted:
                self.feature_tracker.update_state(hint)
            self.accuracy.update_state(tf.maximum(y, 0), logits, sample_weight=labelled)
            return {m.name: m.result() for m in self.metrics}

        def test_step(self, data):
            x, y = data
            probs = self.student(x, training=False)
            self.loss_tracker.update_state(tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, probs)))
            self.accuracy.update_state(y, probs)
            return {"loss": self.loss_tracker.result(), "accuracy": self.accuracy.result()}

    return Distiller()
