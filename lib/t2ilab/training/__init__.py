"""The model and how it is trained: UNet and text encoder, the image representation, the loss, the loop, checkpoints and exact resume, the run's log."""
