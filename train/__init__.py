"""Training: data, the optax train and eval steps, the fit loop, recipes and checkpoints."""
