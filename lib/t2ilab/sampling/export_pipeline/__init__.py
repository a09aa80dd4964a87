"""The pipeline file `t2ilab export` ships inside a pixel-mode export (it never imports t2ilab)."""
