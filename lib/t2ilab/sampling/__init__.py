"""Images from a trained checkpoint: the diffusers pipeline, `t2ilab sample`, the explorer, the export."""
