"""The sentiment example's data handling: deduplication, ambiguity, splits."""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "examples"))

import sentiment_data  # noqa: E402


def test_clean_keeps_one_copy_and_drops_reviews_with_both_labels():
    lines = {
        1: ["好", "好", "不错", "一般", ""],
        0: ["差", "一般", "差", "差"],
    }
    texts, labels, stats = sentiment_data.clean(lines)
    assert dict(zip(texts, labels.tolist())) == {"不错": 1, "好": 1, "差": 0}
    assert stats == {"lines": 8, "unique": 4, "in_both_files": 1, "kept": 3}


def test_split_fixes_the_test_set_and_balances_the_labels():
    labels = np.array([0, 1] * 50, "int32")
    test_a, labeled_a, unlabeled_a = sentiment_data.split(labels, 20, 10, seed=0)
    test_b, labeled_b, unlabeled_b = sentiment_data.split(labels, 20, 10, seed=1)
    np.testing.assert_array_equal(test_a, test_b)  # the same test set for all seeds
    assert not np.array_equal(np.sort(labeled_a), np.sort(labeled_b))
    for test, labeled, unlabeled in (
        (test_a, labeled_a, unlabeled_a),
        (test_b, labeled_b, unlabeled_b),
    ):
        assert np.bincount(labels[labeled]).tolist() == [5, 5]
        together = np.concatenate([test, labeled, unlabeled])
        assert sorted(together.tolist()) == list(range(100))  # a partition


def test_encode_pads_truncates_and_marks_unknown_characters():
    vocabulary = sentiment_data.char_vocabulary(["好好差", "好"], min_count=2)
    assert vocabulary == {"好": 2}
    ids = sentiment_data.encode(["好差好好", "差"], vocabulary, length=3)
    np.testing.assert_array_equal(ids, [[2, 1, 2], [1, 0, 0]])
