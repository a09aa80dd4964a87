"""What the model learns from: the rendered shapes set, a folder of your images, the cached split."""
