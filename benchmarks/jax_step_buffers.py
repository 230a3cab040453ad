"""XLA's own account of a JAX train step's buffers, per regulariser.

The resident-memory table (``benchmarks/memory_table.py``) samples the whole
process: its JAX column also moves with the host allocator and with what a
compilation keeps. This benchmark asks XLA instead: the train step of the
same model (a 500,000 x 128 embedding, batches of 32 x 64, Adam) is jitted
as Keras jits it (the state donated), compiled, and its buffer assignment
read (``Compiled.memory_analysis()``): the temporaries it needs besides its
arguments and outputs. Reported per regulariser: those temporaries in MB,
and over the plain step's (one float32 table is 244 MB; the plain step's
temporaries are the table's dense gradient).

Usage:
    KERAS_BACKEND=jax python benchmarks/jax_step_buffers.py
    KERAS_BACKEND=jax python benchmarks/jax_step_buffers.py --only plain pgd3
"""

import argparse
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import memory_table  # noqa: E402


def temporaries_mb(name, vocab):
    """XLA's temporary buffers of the jitted train step, in MB."""
    import jax

    from benchmarks import xla_cost  # imports jax

    model, x, y = memory_table.built(name, True, vocab)
    model.train_on_batch(x, y)  # the optimizer's slots; the lookup probes
    step = jax.jit(model.train_step, donate_argnums=0)
    arguments = xla_cost.train_step_arguments(model, x, y)
    analysis = step.lower(*arguments).compile().memory_analysis()
    return analysis.temp_size_in_bytes / 2**20


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="regularisers")
    parser.add_argument("--vocab", type=int, default=500_000)
    args = parser.parse_args()
    names = [n for n in (args.only or memory_table.NAMES) if n != "input_gp"]
    if "plain" not in names:
        names = ["plain", *names]
    table = args.vocab * memory_table.HIDDEN * 4 / 2**20
    print(f"One float32 table: {table:.0f} MB.\n")
    print("| regulariser | XLA temporaries MB | over plain |")
    print("|---|---|---|")
    plain = None
    for name in names:
        mb = temporaries_mb(name, args.vocab)
        plain = mb if name == "plain" else plain
        print(f"| {name} | {mb:.0f} | {mb - plain:+.0f} |", flush=True)


if __name__ == "__main__":
    main()
