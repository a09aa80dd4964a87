"""`t2ilab <command> ...`: a thin dispatcher; each command's flags live with the module that does the work."""

from __future__ import annotations

import importlib
import sys

# command -> (module with a `main(argv) -> int`, one-line help)
COMMANDS = {
    "train": ("t2ilab.train_cli", "train or resume a model (./run_train.sh)"),
    "sample": ("t2ilab.sampling.sample", "generate images from a checkpoint (./run_inference.sh)"),
    "preview": ("t2ilab.datasets.data", "render a preview grid of the configured data set"),
    "report": ("t2ilab.reporting.reports", "execute the report notebooks for a run's milestones"),
    "export": ("t2ilab.sampling.export", "write a checkpoint as a folder diffusers loads without t2ilab (t2ilab export CKPT OUT)"),
    "demo": ("t2ilab.demo", "the whole story on the embedded shapes set (make demo)"),
    "diagnose": ("t2ilab.review.diagnose", "verdict, evidence and next step from a run's loss log (t2ilab diagnose OUTPUT_DIR)"),
    "arms": ("t2ilab.review.arms", "branch a checkpoint into the guide's arms, train and judge each vs continue (t2ilab arms CKPT)"),
}


def usage() -> str:
    lines = ["usage: t2ilab <command> [options]   (t2ilab <command> --help for its options)", "", "commands:"]
    lines += [f"  {name:<9} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"t2ilab: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
