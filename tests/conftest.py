import os

# Tests run on the CPU unless told otherwise, with the project's PRNG (see bench/cli.py).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_DEFAULT_PRNG_IMPL", "rbg")
