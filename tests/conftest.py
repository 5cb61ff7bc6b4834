import os

# Tests run on the CPU with the devices JAX finds; keep XLA from grabbing every core's
# worth of threads per test process when pytest-xdist is not used.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
