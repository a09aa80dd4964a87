"""Is it getting better: the shapes judge, quality reviews and metrics, the loss diagnosis and its plots, the resume arms."""
