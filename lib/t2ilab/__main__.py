"""`python -m t2ilab ...` (also used by `accelerate launch -m t2ilab train ...`)."""

from t2ilab.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
