"""Training: data, the optax train and eval steps, the fit loop, recipes and checkpoints."""

if __name__ != "archbench.train":  # one module, one name: never also a top-level `train`
    raise ImportError(
        f"{__name__!r}: the folder train/ is the package archbench.train; "
        "import archbench.train (pip install -e . in the repository)"
    )
