"""From labelled rasters to a model file: data, augmentation, losses, the training loop, its schedule."""
